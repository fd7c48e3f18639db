"""Which filesystem holds a folder, and a refusal for the ones the memory cannot live on.

The database runs in WAL mode: its readers and writers coordinate through a shared-memory
file (``episodic.sqlite-shm``) mapped by every process, and POSIX locks. Both only work
between processes of one host; over NFS, SMB, sshfs and the like two machines (or even one
machine, when the filesystem's locking or mmap is weak) can each believe they hold the
write lock, and the database is corrupted without an error. SQLite's own documentation
says WAL does not work over a network filesystem, so a memory folder on one is refused
before anything is written there.

Linux only: the mount table is read from ``/proc/self/mountinfo``. Where that file is
missing (macOS, BSD) the filesystem is unknown and the folder is allowed.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import UsageError

MOUNTINFO = Path("/proc/self/mountinfo")

# Filesystem types as mountinfo spells them (FUSE ones as ``fuse.{subtype}``). Cluster
# filesystems are here too: they share the files between hosts, not SQLite's -shm mapping.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smb2", "smbfs", "ncpfs", "9p", "afs", "coda",
    "ceph", "fuse.ceph", "fuse.ceph-fuse", "glusterfs", "fuse.glusterfs", "lustre", "gpfs",
    "beegfs", "orangefs", "pvfs2", "ocfs2", "gfs2", "davfs", "fuse.davfs2", "fuse.sshfs",
    "sshfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.juicefs",
})

# Mount points escape space, tab, newline and backslash as three octal digits.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class NetworkFilesystemError(UsageError):
    """The memory folder is on a network filesystem, where SQLite's WAL is unsafe: exit 2."""


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """The mounts in a ``/proc/self/mountinfo`` text, in its order.

    Args:
        text: the file's contents; one mount a line,
            ``ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER``.
    Returns:
        ``(mount point, filesystem type)`` pairs, the mount point unescaped (``\\040`` is a
        space). Lines that are not in that shape are left out.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        # The optional fields vary in number; " - " ends them, and the type follows it.
        if len(fields) < 5 or "-" not in fields[5:]:
            continue
        separator = fields.index("-", 5)
        if separator + 1 >= len(fields):
            continue
        mounts.append((_unescape(fields[4]), fields[separator + 1]))
    return mounts


def filesystem_type(path: str, mountinfo: str) -> str | None:
    """The type of the filesystem that holds ``path`` (absolute, resolved), or ``None``.

    The mount whose mount point is the longest leading run of ``path``'s components holds
    it; of two at the same point the later one, which hides the earlier.
    """
    best, best_type = -1, None
    for mount_point, fs_type in parse_mountinfo(mountinfo):
        inside = mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= best:
            best, best_type = len(mount_point), fs_type
    return best_type


def read_mountinfo() -> str | None:
    """This process's mount table, or ``None`` where the system has no ``/proc`` (macOS)."""
    try:
        return MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None


def refuse_network_filesystem(folder: str | os.PathLike, what: str = "the memory folder") -> None:
    """Raise :class:`NetworkFilesystemError` if ``folder`` lies on a network filesystem.

    Args:
        folder: the folder to check; it need not exist yet (the mount that would hold it
            is checked), and symbolic links are followed.
        what: how the message names the folder.
    Raises:
        NetworkFilesystemError: naming the folder, the filesystem type and why.
    """
    mountinfo = read_mountinfo()
    if mountinfo is None:
        return  # unknown filesystem: allowed
    resolved = str(Path(folder).expanduser().resolve())
    fs_type = filesystem_type(resolved, mountinfo)
    if fs_type in NETWORK_FILESYSTEMS:
        raise NetworkFilesystemError(
            f"{what} {resolved} is on a network filesystem ({fs_type}): the database's "
            f"write-ahead log needs shared memory and locks on one host, which {fs_type} "
            f"does not give, so it could be corrupted; put the root on a local disk")
