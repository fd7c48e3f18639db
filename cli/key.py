"""``sleep.py key init | change | seal | export``: the memory's master key, a thin shell over :mod:`core.keys`.

No passphrase is ever an argument. The current one comes from where the night finds it
(systemd credentials, ``SLEEP_PASSPHRASE_FILE``, ``memory.key_command``), else from a
prompt on the terminal; a new one from ``--new-passphrase-file FILE`` (mode 0600), else a
prompt typed twice.
"""
from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from api.maintenance import is_unencrypted, seal
from core.config import load_config
from core.keys import (
    NO_PASSPHRASE_SOURCE,
    MasterKeyError,
    change_passphrase,
    export_key,
    init_key,
    key_file,
    night_passphrase,
    read_export,
    unlock as unwrap,
    read_secret_file,
    write_export,
)
from core.lock import NightLock
from core.paths import Paths

KEY_HELP = "the master key that encrypts the memory: make it, change its passphrase, back it up"
KEY_DESCRIPTION = (
    "With memory.encryption: on, the memory is sealed with a random master key kept in "
    "memory/key.json, wrapped by your passphrase. The night reads the passphrase from systemd "
    "credentials (LoadCredential=sleep-passphrase:FILE), from the file SLEEP_PASSPHRASE_FILE names "
    "(mode 0600), or from memory.key_command; never from the command line. Lose both the "
    "passphrase and an exported copy of the key, and the memory cannot be read by anyone.")
NEW_PASSPHRASE_HELP = "read the new passphrase from FILE (mode 0600; one line) instead of asking on the terminal"


def add_key_group(sub, add_common) -> None:
    """Register ``key init|change|export`` on the ``sleep.py`` subparsers.

    Args:
        sub: the ``add_subparsers`` object of ``cli.main.build_parser``.
        add_common: ``cli.main._add_common`` (``--root``, ``--config``, ``--set``, ``-v``).
    """
    key = sub.add_parser("key", help=KEY_HELP, description=KEY_DESCRIPTION)
    group = key.add_subparsers(dest="key_command", metavar="SUBCOMMAND", required=True)

    init = group.add_parser("init", help="make the master key (once) and wrap it with a new passphrase",
                            description="Make a random 256-bit master key and store it in memory/key.json, "
                                        "wrapped by a new passphrase. Refused if the memory has a key.")
    init.add_argument("--new-passphrase-file", type=Path, metavar="FILE", help=NEW_PASSPHRASE_HELP)
    init.add_argument("--restore", type=Path, metavar="FILE",
                      help="wrap the key `key export` saved in FILE (mode 0600) instead of making a new one")
    add_common(init, config=False)  # needs no passphrase source: the new one is typed or in a file
    init.set_defaults(func=cmd_init, manages_key=True)

    change = group.add_parser("change", help="give the master key a new passphrase (nothing is re-encrypted)",
                              description="Re-wrap the master key under a new passphrase, in one atomic "
                                          "replace of memory/key.json. Update the passphrase the night reads "
                                          "afterwards. A copy of the old key.json still opens with the old "
                                          "passphrase: the key itself does not change.")
    change.add_argument("--new-passphrase-file", type=Path, metavar="FILE", help=NEW_PASSPHRASE_HELP)
    add_common(change)
    change.set_defaults(func=cmd_change, manages_key=True)

    seal = group.add_parser("seal", help="encrypt a memory stored unencrypted, in place (stop and rerun at will)",
                            description="Encrypt an existing memory: make the master key (asking for a new "
                                        "passphrase) unless it exists, rewrite every file sleep wrote under "
                                        "the root sealed, then the database through SQLCipher. Safe to stop "
                                        "and run again: it goes on where it stopped. Stop `sleep.py serve` and "
                                        "the daemon first; afterwards set memory.encryption: on in the config. "
                                        "Your own recordings and journals in data/raw are left as they are; "
                                        "the disk blocks the plaintext files held are freed, not wiped.")
    seal.add_argument("--new-passphrase-file", type=Path, metavar="FILE",
                      help=NEW_PASSPHRASE_HELP + " (when the memory has no key yet)")
    add_common(seal)
    seal.set_defaults(func=cmd_seal, manages_key=True)

    export = group.add_parser("export", help="print the master key as hex, for a backup kept apart from the memory",
                              description="Print the raw master key (64 hex digits), or write it to a new "
                                          "file with mode 0600. With it, `key init --restore FILE` opens the "
                                          "memory again after key.json or the passphrase is lost; anyone "
                                          "holding it can read the memory.")
    export.add_argument("--output", type=Path, metavar="FILE",
                        help="write the key to FILE (created with mode 0600; an existing file is refused)")
    add_common(export)
    export.set_defaults(func=cmd_export, manages_key=True)


def _on_a_terminal() -> bool:
    return sys.stdin.isatty()


def _current_passphrase(args) -> str:
    """The passphrase the night would use, else one typed on the terminal."""
    cfg = load_config(args.config, args.overrides)
    found = night_passphrase(cfg.memory.key_command, os.environ)
    if found is not None:
        return found.text
    if not _on_a_terminal():
        raise MasterKeyError(NO_PASSPHRASE_SOURCE + ", or run this on a terminal")
    return getpass.getpass("passphrase: ")


def _new_passphrase(args) -> str:
    if args.new_passphrase_file:
        return read_secret_file(args.new_passphrase_file)
    if not _on_a_terminal():
        raise MasterKeyError("no terminal to ask for the new passphrase: give --new-passphrase-file FILE")
    first = getpass.getpass("new passphrase: ")
    if first != getpass.getpass("new passphrase again: "):
        raise MasterKeyError("the two passphrases differ; nothing was changed")
    return first


def refuse_plaintext_memory(paths: Paths) -> None:
    """Refuse a bare key for a memory that already holds a plaintext database.

    Why: with a key, every reader expects the database sealed; a key alone would leave the
    memory unreadable by the night and still readable by anyone. `key seal` makes the key
    and seals what is there.
    """
    if is_unencrypted(paths):
        raise MasterKeyError(f"{paths.database}: this memory is stored unencrypted; "
                             "`sleep.py key seal` makes its key and encrypts it in place")


def cmd_init(args) -> int:
    path = key_file(Paths.at(args.root).memory)
    if path.exists():  # before asking for anything
        raise MasterKeyError(f"{path}: a key exists already; `sleep.py key change` gives it a new passphrase")
    refuse_plaintext_memory(Paths.at(args.root))
    restored = read_export(args.restore) if args.restore else None
    init_key(path, _new_passphrase(args), master_key=restored)
    print(f"{'restored the' if restored else 'made a new'} master key in {path}")
    if not restored:
        print("back it up apart from the memory: sleep.py key export --output FILE")
    return 0


def cmd_change(args) -> int:
    path = key_file(Paths.at(args.root).memory)
    old = _current_passphrase(args)
    change_passphrase(path, old, _new_passphrase(args))
    print(f"new passphrase set in {path}; give the night the new one too "
          "(its credential, SLEEP_PASSPHRASE_FILE or memory.key_command)")
    return 0


def cmd_seal(args) -> int:
    paths = Paths.at(args.root)
    path = key_file(paths.memory)
    if not paths.database.exists():
        raise MasterKeyError(f"{paths.database}: no memory here to seal; `sleep.py key init` makes the key "
                             "of a new one")
    with NightLock(paths.lock, "key seal"):
        if path.exists():
            master_key = unwrap(path, _current_passphrase(args))
        else:
            master_key = init_key(path, _new_passphrase(args))
            print(f"made a new master key in {path}; back it up apart from the memory: "
                  "sleep.py key export --output FILE")
        done = seal(paths, master_key)
    print(f"sealed {done['files']} files ({done['bytes'] / 1e6:.1f} MB; {done['already']} were sealed already); "
          f"database: {done['database']}")
    print("now set memory.encryption: on in the config the night uses")
    return 0


def cmd_export(args) -> int:
    path = key_file(Paths.at(args.root).memory)
    exported = export_key(path, _current_passphrase(args))
    if args.output:
        write_export(args.output, exported)
        print(f"master key written to {args.output} (mode 0600); keep it apart from the memory")
        return 0
    if sys.stdout.isatty():
        print("anyone who sees this key can read the memory:", file=sys.stderr)
    print(exported)
    return 0
