"""A one-file FUSE filesystem whose file has a band of bytes that fails with EIO, for real.

Read errors in the middle of a file (a bad disk sector, a network filesystem losing its
server) cannot be provoked on an ordinary filesystem. This speaks the kernel's FUSE protocol
over /dev/fuse directly (no libfuse), mounts with mount(2), and answers READ with -EIO for the
band while `broken` is set; the file is opened with FOPEN_DIRECT_IO so that every read reaches
it and nothing is served from the page cache. It needs CAP_SYS_ADMIN and /dev/fuse:
`mount_faultfs` raises FaultFSUnavailable when they are missing, for the test to skip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import struct
import threading
from pathlib import Path

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, ext, pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr
READ_IN = struct.Struct("<QQII")  # fh, offset, size, read_flags (the rest is not needed)
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")

LOOKUP, FORGET, GETATTR, OPEN, READ, RELEASE, FLUSH, INIT = 1, 2, 3, 14, 15, 18, 25, 26
OPENDIR, RELEASEDIR, BATCH_FORGET = 27, 29, 42
NO_REPLY = {FORGET, BATCH_FORGET}
FOPEN_DIRECT_IO = 1
ROOT, FILE = 1, 2
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


class FaultFSUnavailable(Exception):
    """No /dev/fuse or no right to mount: the test that needs it is skipped."""


class FaultFS:
    """Serves `name` with `data`; reads touching [bad_from, bad_to) fail while `broken`."""

    def __init__(self, mountpoint: Path, name: str, data: bytes, bad: tuple[int, int]) -> None:
        self.mountpoint, self.name, self.data = mountpoint, name.encode(), data
        self.bad_from, self.bad_to = bad
        self.broken = True
        self.failed_reads = 0
        self._fd = -1
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._thread = threading.Thread(target=self._serve, name="faultfs", daemon=True)

    @property
    def path(self) -> Path:
        return self.mountpoint / self.name.decode()

    def mount(self) -> None:
        try:
            self._fd = os.open("/dev/fuse", os.O_RDWR)
        except OSError as exc:
            raise FaultFSUnavailable(f"/dev/fuse: {exc.strerror}") from None
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        options = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0".encode()
        flags = MS_NOSUID | MS_NODEV
        if (
            self._libc.mount(b"faultfs", str(self.mountpoint).encode(), b"fuse", flags, options)
            != 0
        ):
            os.close(self._fd)
            raise FaultFSUnavailable(f"mount: {os.strerror(ctypes.get_errno())}")
        self._thread.start()

    def unmount(self) -> None:
        self._libc.umount2(str(self.mountpoint).encode(), MNT_DETACH)
        self._thread.join(timeout=10)
        os.close(self._fd)

    def _serve(self) -> None:
        while True:
            try:
                request = os.read(self._fd, (1 << 20) + 4096)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return  # ENODEV: unmounted
            length, opcode, unique, node, *_ = IN_HEADER.unpack_from(request)
            body = request[IN_HEADER.size : length]
            if opcode in NO_REPLY:
                continue
            try:
                error, payload = self._answer(opcode, node, body)
            except struct.error:  # a request shorter than this protocol version's
                error, payload = errno.EIO, b""
            reply = OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload
            try:
                os.write(self._fd, reply)
            except OSError:
                continue  # the request was interrupted meanwhile

    def _answer(self, opcode: int, node: int, body: bytes) -> tuple[int, bytes]:
        if opcode == INIT:
            _, minor, readahead, _ = struct.unpack_from("<IIII", body)
            return 0, INIT_OUT.pack(7, min(minor, 31), readahead, 0, 16, 12, 4096, 1, 32, 0, 0)
        if opcode == LOOKUP:
            if node != ROOT or body.rstrip(b"\0") != self.name:
                return errno.ENOENT, b""
            return 0, struct.pack("<QQQQII", FILE, 0, 60, 60, 0, 0) + self._attr(FILE)
        if opcode == GETATTR:
            return 0, struct.pack("<QII", 60, 0, 0) + self._attr(node)
        if opcode in (OPEN, OPENDIR):
            return 0, struct.pack("<QII", 0, FOPEN_DIRECT_IO if opcode == OPEN else 0, 0)
        if opcode == READ:
            return self._read(*READ_IN.unpack_from(body)[1:3])
        if opcode in (RELEASE, RELEASEDIR, FLUSH):
            return 0, b""
        return errno.ENOSYS, b""

    def _read(self, offset: int, size: int) -> tuple[int, bytes]:
        end = min(offset + size, len(self.data))
        if self.broken and offset < self.bad_to and end > self.bad_from:
            if offset >= self.bad_from:
                self.failed_reads += 1
                return errno.EIO, b""
            end = self.bad_from  # a short read up to the bad band; the next read fails
        return 0, self.data[offset:end]

    def _attr(self, node: int) -> bytes:
        if node == ROOT:
            return ATTR.pack(
                ROOT, 0, 0, 0, 0, 0, 0, 0, 0, stat.S_IFDIR | 0o755, 2, 0, 0, 0, 4096, 0
            )
        size, mtime = len(self.data), 1_780_000_000
        mode = stat.S_IFREG | 0o444
        blocks = (size + 511) // 512
        return ATTR.pack(
            FILE, size, blocks, mtime, mtime, mtime, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0
        )
