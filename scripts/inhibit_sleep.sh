#!/usr/bin/env bash
# Run a command holding a logind sleep/idle inhibitor, so the machine does not suspend
# in the middle of a night (closing the lid still suspends: logind ignores inhibitors
# for the lid switch by default).
#   scripts/inhibit_sleep.sh scripts/with_venv.sh python sleep.py daemon --once
# A user unit runs outside any login session, and stock polkit refuses such a process an
# inhibitor (org.freedesktop.login1.inhibit-block-sleep has allow_any=no) unless you are
# logged in graphically. A night without an inhibitor is still a good night (a suspended
# process carries on after wake), so run without one rather than not at all, and say so.
# deploy/README.md has the polkit rule that always allows it.
set -euo pipefail
inhibit=(systemd-inhibit --what=sleep:idle --mode=block --who=sleep --why="nightly memory run")
if command -v systemd-inhibit >/dev/null 2>&1 && "${inhibit[@]}" true 2>/dev/null; then
  exec "${inhibit[@]}" "$@"
fi
echo "sleep: could not take a sleep inhibitor (systemd-inhibit missing or refused); running without one" >&2
exec "$@"
