"""A memory folder on a network filesystem is refused before anything is written there."""
from __future__ import annotations

import pytest

from core import filesystems
from core.errors import UsageError
from core.filesystems import NetworkFilesystemError, filesystem_type, parse_mountinfo
from core.paths import Paths
from memory.db import open_database

# Shaped like a real /proc/self/mountinfo: optional fields (shared:N) before the " - ".
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683568k
60 27 0:50 / /home/ana/nas rw,relatime shared:40 master:3 - nfs4 nas:/export rw,vers=4.2
61 60 8:17 / /home/ana/nas/local-disk rw,relatime - ext4 /dev/sdb1 rw
62 27 0:51 / /srv/my\\040videos rw,relatime - cifs //nas/videos rw
63 27 0:52 / /var/lib/docker/overlay2/merged rw,relatime - overlay overlay rw,lowerdir=/a
64 27 0:53 / /mnt/box rw,nosuid,nodev - fuse.sshfs ana@box:/data rw,user_id=1000
65 27 0:54 / /mnt/nas rw,relatime - ext4 /dev/sdc1 rw
this line is not a mount
"""


def test_parse_reads_mount_points_and_types():
    mounts = parse_mountinfo(MOUNTINFO)
    assert ("/home/ana/nas", "nfs4") in mounts
    assert ("/mnt/box", "fuse.sshfs") in mounts
    assert len(mounts) == 9  # the line that is not a mount is left out


def test_escaped_space_in_a_mount_point():
    assert ("/srv/my videos", "cifs") in parse_mountinfo(MOUNTINFO)
    assert filesystem_type("/srv/my videos/root/memory", MOUNTINFO) == "cifs"
    assert filesystem_type("/srv/my/memory", MOUNTINFO) == "ext4"


@pytest.mark.parametrize("path, expected", [
    ("/home/ana/nas/root/memory", "nfs4"),
    ("/home/ana/nas", "nfs4"),
    ("/home/ana/nas/local-disk/root/memory", "ext4"),  # an ext4 mount inside the nfs one
    ("/home/ana/nasty/memory", "ext4"),  # a longer name, not under /home/ana/nas
    ("/dev/shm/root/memory", "tmpfs"),
    ("/var/lib/docker/overlay2/merged/root", "overlay"),
    ("/mnt/box/root", "fuse.sshfs"),
])
def test_the_longest_mount_point_holds_the_path(path, expected):
    assert filesystem_type(path, MOUNTINFO) == expected


def test_a_later_mount_on_the_same_point_hides_the_earlier():
    text = MOUNTINFO + "70 27 0:60 / /mnt/nas rw - nfs nas:/x rw\n"
    assert filesystem_type("/mnt/nas/memory", text) == "nfs"


@pytest.fixture
def fake_mounts(monkeypatch):
    """Make the mount table say what the test gives it (``None``: no /proc)."""
    def use(text):
        monkeypatch.setattr(filesystems, "read_mountinfo", lambda: text)
    return use


def test_a_network_filesystem_is_refused_naming_folder_type_and_reason(fake_mounts, tmp_path):
    folder = tmp_path / "memory"
    fake_mounts(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n80 27 0:9 / {tmp_path} rw - nfs srv:/e rw\n")
    with pytest.raises(NetworkFilesystemError) as caught:
        filesystems.refuse_network_filesystem(folder)
    message = str(caught.value)
    assert str(folder) in message and "(nfs)" in message
    assert "network filesystem" in message and "one host" in message
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2


@pytest.mark.parametrize("fs_type", ["ext4", "tmpfs", "overlay", "btrfs", "xfs", "zfs", "apfs"])
def test_local_filesystems_are_allowed(fake_mounts, tmp_path, fs_type):
    fake_mounts(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n80 27 0:9 / {tmp_path} rw - {fs_type} x rw\n")
    filesystems.refuse_network_filesystem(tmp_path / "memory")


@pytest.mark.parametrize("fs_type", sorted(filesystems.NETWORK_FILESYSTEMS))
def test_every_network_type_is_refused(fake_mounts, tmp_path, fs_type):
    fake_mounts(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n80 27 0:9 / {tmp_path} rw - {fs_type} x rw\n")
    with pytest.raises(NetworkFilesystemError, match=f"\\({fs_type}\\)"):
        filesystems.refuse_network_filesystem(tmp_path / "memory")


def test_no_mount_table_means_allowed(fake_mounts, tmp_path):
    fake_mounts(None)  # macOS: no /proc
    filesystems.refuse_network_filesystem(tmp_path / "memory")


def test_a_symlink_into_a_network_mount_is_followed(fake_mounts, tmp_path):
    (tmp_path / "share").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "share")
    fake_mounts(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n80 27 0:9 / {tmp_path / 'share'} rw - cifs x rw\n")
    with pytest.raises(NetworkFilesystemError, match="cifs"):
        filesystems.refuse_network_filesystem(tmp_path / "link" / "memory")


def test_open_database_on_nfs_raises_before_creating_anything(fake_mounts, root):
    paths = Paths.at(root)
    fake_mounts(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n80 27 0:9 / {root} rw - nfs srv:/e rw\n")
    with pytest.raises(NetworkFilesystemError, match=str(paths.memory)):
        open_database(paths.database)
    assert list(root.iterdir()) == []  # not even the memory folder


def test_open_database_on_this_machine_still_works(root):
    engine = open_database(Paths.at(root).database)
    engine.dispose()
    assert Paths.at(root).database.exists()


def test_a_night_on_nfs_writes_nothing_there(fake_mounts, root):
    """Refused before the lock file and the night's log are made, not only at the database."""
    import datetime as dt

    from core.config import SleepConfig
    from pipeline.runner import run_night

    paths = Paths.at(root)
    paths.raw(dt.date(2026, 1, 15)).mkdir(parents=True)
    fake_mounts(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n80 27 0:9 / {root} rw - nfs srv:/e rw\n")
    with pytest.raises(NetworkFilesystemError):
        run_night(dt.date(2026, 1, 15), SleepConfig(), paths, stages=[], device="cpu")
    assert sorted(p.name for p in root.iterdir()) == ["data"]  # the recordings alone
