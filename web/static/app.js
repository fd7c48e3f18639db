// The page's behaviour: search through /api/search, list the days from /api/timeline,
// browse a day through /api/day/DATE. No framework; text always goes in as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function seconds(s) {
  const m = Math.floor(s / 60);
  return m ? `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}` : `${s.toFixed(1)} s`;
}

function when(clip) {
  if (clip.wall_start) return clip.wall_start.replace("T", " ").slice(0, 19);
  return `${clip.date} +${seconds(clip.start_s)}`;
}

function player(clip) {
  if (!clip.player) return el("p", { class: "muted" }, "only a picture is left of this moment");
  const attrs = { controls: true, preload: "none", src: clip.player.url };
  if (clip.player.kind === "video") return el("video", { ...attrs, poster: clip.thumbnail });
  return el("audio", attrs);
}

function clipItem(clip) {
  const picture = clip.thumbnail
    ? el("img", { class: "thumb", src: clip.thumbnail, alt: `clip ${clip.clip_id}`, loading: "lazy" })
    : el("div", { class: "nothumb" });
  const facts = [`clip ${clip.clip_id}`];
  if (typeof clip.score === "number") facts.push(`score ${clip.score.toFixed(3)}`);
  if (clip.modality) facts.push(clip.modality);
  if (typeof clip.minutes === "number") facts.push(`${clip.minutes.toFixed(0)} min from the entry`);
  if (clip.episode) facts.push(`episode ${clip.episode.index ?? clip.episode}`);
  return el("li", { class: "hit", "data-clip-id": clip.clip_id },
    picture,
    el("div", {},
      el("div", { class: "when" }, when(clip)),
      el("div", { class: "source" }, `${clip.source_path} +${seconds(clip.start_s)}`),
      el("div", { class: "muted" }, facts.join(" · ")),
      player(clip)));
}

function entryItem(entry) {
  return el("li", { class: "entry", "data-entry-id": entry.entry_id },
    el("div", { class: "when" }, `${entry.date}${entry.at ? " " + entry.at : ""}`),
    el("div", {}, entry.text),
    el("div", { class: "muted" }, `score ${entry.score.toFixed(3)} · ${entry.clips.length} clips nearby`),
    el("ol", {}, ...entry.clips.map(clipItem)));
}

function show(title, status, items, isError = false) {
  $("answer-title").textContent = title;
  $("status").textContent = status;
  $("status").classList.toggle("error", isError);
  $("results").replaceChildren(...items);
  $("more").hidden = true;
}

async function search(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const data = new FormData(form);
  show("Results", "searching…", []);
  let answer;
  try {
    const response = await fetch("/api/search", { method: "POST", body: data, credentials: "same-origin" });
    answer = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (!response.ok) throw new Error(answer.error || response.statusText);
  } catch (error) {
    show("Results", error.message, [], true);
    return;
  }
  if (answer.entries) {
    show("Journal", `${answer.entries.length} entries in ${answer.seconds.toFixed(2)} s`,
      answer.entries.map(entryItem));
  } else {
    show("Results", `${answer.hits.length} moments in ${answer.seconds.toFixed(2)} s`, answer.hits.map(clipItem));
  }
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
  return answer;
}

async function openDay(date, offset = 0) {
  let answer;
  try {
    answer = await getJSON(`/api/day/${encodeURIComponent(date)}?offset=${offset}`);
  } catch (error) {
    show(`Clips of ${date}`, error.message, [], true);
    return;
  }
  const items = answer.clips.map(clipItem);
  if (offset === 0) show(`Clips of ${date}`, `${answer.clips.length}${answer.more ? "+" : ""} clips in time order`, items);
  else $("results").append(...items);
  const more = $("more");
  more.hidden = !answer.more;
  more.onclick = () => openDay(date, offset + answer.clips.length);
}

function episodeLine(ep) {
  const span = ep.start && ep.end ? `${ep.start.slice(11, 16)}–${ep.end.slice(11, 16)}` : `+${seconds(ep.start_s)}`;
  return el("li", {}, `${span}, ${ep.clips} clips`);
}

async function timeline() {
  let answer;
  try {
    answer = await getJSON("/api/timeline");
  } catch (error) {
    $("episodes-note").textContent = error.message;
    return;
  }
  $("episodes-note").textContent = answer.days.length
    ? (answer.episodes === "available" ? "" : `Episodes: ${answer.episodes}.`)
    : "No nights yet: run sleep.py --date D first.";
  $("days").replaceChildren(...answer.days.map((day) => el("li", { "data-date": day.date },
    el("button", { type: "button", onclick: () => openDay(day.date) }, day.date),
    ` ${day.clips} clips`,
    day.report ? " · " : null,
    day.report ? el("a", { href: day.report }, "report") : null,
    day.episodes && day.episodes.length ? el("ol", { class: "episodes" }, ...day.episodes.map(episodeLine)) : null)));
}

function preview() {
  const image = $("preview");
  const file = $("file").files[0];
  if (image.src) URL.revokeObjectURL(image.src);
  image.hidden = !(file && file.type.startsWith("image/"));
  if (!image.hidden) image.src = URL.createObjectURL(file);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form.search")) form.addEventListener("submit", search);
  $("file").addEventListener("change", preview);
  timeline();
});
