"""The shared-memory path: memfd arenas registered with the daemon.

As in the C++ Checkpointer: two arenas per run (double buffering), each a
memfd sized once (to the save's bytes plus 1/8 headroom, in 2 MiB units), sealed against
shrinking and growing, mapped once and populated up front (first-touch page
faults cost 10-20x a warm copy here), registered over the arena socket
(``REGISTER <token>`` with the fd attached, ``socket.send_fds``). A save
copies its tensors into a free arena (numpy copies, which release the GIL,
several threads for large tensors) and references them by offset; the arena
is free again when WaitSaved reports the save done.

Tensors that do not change (a fine-tune's frozen parameters, with
``open_run(seal_frozen=True)``) go once into a SealedArena instead, which the
trainer's tensors then map copy-on-write: later saves name them there
without copying them, and the daemon hashes them once.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Tensors of 64 KiB and more start at a page boundary (the daemon's files put
# tensors at 4 KiB boundaries, so it writes them to disk straight from the
# arena), smaller ones at 64 bytes.
ALIGN = 64
PAGE_ALIGN = 4096
PAGE_ALIGN_MIN = 64 << 10
PARALLEL_COPY_BYTES = 32 << 20
_MADV_POPULATE_WRITE = 23


def shm_supported() -> bool:
    return hasattr(os, "memfd_create") and hasattr(socket, "send_fds") and hasattr(fcntl, "F_ADD_SEALS")


class ArenaError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class Channel:
    """A SOCK_SEQPACKET connection to the daemon's arena socket."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(60)
        self.sock.connect(path)

    def exchange(self, request: str, fd: int | None = None, want_fd: bool = False):
        data = request.encode()
        if fd is not None:
            socket.send_fds(self.sock, [data], [fd])
        else:
            self.sock.send(data)
        got_fd = None
        if want_fd:
            msg, fds, _, _ = socket.recv_fds(self.sock, 1024, 1)
            got_fd = fds[0] if fds else None
        else:
            msg = self.sock.recv(1024)
        reply = msg.decode(errors="replace")
        if reply.startswith("OK "):
            return reply[3:].split(" "), got_fd
        if got_fd is not None:
            os.close(got_fd)
        if reply.startswith("ERR "):
            code, _, message = reply[4:].partition(" ")
            raise ArenaError(code, "arena refused: " + message)
        raise ArenaError("INTERNAL", f"bad arena reply: {reply!r}")

    def close(self):
        self.sock.close()


HUGE_PAGE = 2 << 20


def _free_huge_pages() -> int:
    """Free 2 MiB hugetlb pages (vm.nr_hugepages reserved and unused); 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        if info["Hugepagesize"].split()[0] != str(HUGE_PAGE >> 10):
            return 0
        return int(info["HugePages_Free"])
    except (OSError, KeyError, ValueError):
        return 0


class Arena:
    """A sealed memfd, mapped and populated once. Huge pages where the host
    offers them, as the C++ client does: a hugetlb memfd when enough 2 MiB
    pages are free, else a normal one advised MADV_HUGEPAGE (honoured when
    shmem THP is advise/within_size/always); a 4 KiB page costs a hypervisor
    fault on first touch on a paravirtualized VM, a 2 MiB one 512x fewer."""

    def __init__(self, size: int):
        self.size = size
        self.hugetlb = False
        if size % HUGE_PAGE == 0 and _free_huge_pages() >= size // HUGE_PAGE:
            try:
                self._create(size, hugetlb=True)
                self.hugetlb = True
            except OSError:
                pass  # taken meanwhile: a normal memfd
        if not self.hugetlb:
            self._create(size, hugetlb=False)
        self.id = 0
        # The SaveResult using it until it is done; True while it is staged.
        self.busy: Any = None

    def _create(self, size: int, hugetlb: bool):
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | (os.MFD_HUGETLB if hugetlb else 0)
        self.fd = os.memfd_create("ckptd-py-arena", flags)
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            # Any: both are dropped (None) when the arena is closed.
            self.map: Any = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if not hugetlb and hasattr(mmap, "MADV_HUGEPAGE"):
                try:
                    self.map.madvise(mmap.MADV_HUGEPAGE)
                except OSError:
                    pass
            self.view: Any = np.frombuffer(self.map, dtype=np.uint8)
            self._populate(strict=hugetlb)
        except BaseException:
            self.view = None
            if getattr(self, "map", None) is not None:
                self.map.close()
                self.map = None
            os.close(self.fd)
            raise

    def _populate(self, strict: bool):
        try:
            self.map.madvise(_MADV_POPULATE_WRITE)
        except OSError:
            if strict:
                raise  # a hugetlb pool that ran dry: the caller falls back
            self.view[:: mmap.PAGESIZE] = 0  # pre-5.14 kernels: touch every page
        except ValueError:
            self.view[:: mmap.PAGESIZE] = 0

    def close(self):
        self.view = None
        try:
            self.map.close()
        except BufferError:
            pass
        os.close(self.fd)


def _copy(dst: np.ndarray, src: np.ndarray, pool: ThreadPoolExecutor | None):
    src = src.reshape(-1).view(np.uint8)
    n = src.nbytes
    if pool is None or n < PARALLEL_COPY_BYTES:
        dst[:n] = src
        return
    k = pool._max_workers  # noqa: SLF001 - the pool is ours
    step = (n // k + 4095) // 4096 * 4096
    list(pool.map(lambda a: np.copyto(dst[a : a + step], src[a : a + step]), range(0, n, step)))


# /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
_PM_PRESENT, _PM_SWAPPED, _PM_FILE = 1 << 63, 1 << 62, 1 << 61


class SealedArena:
    """Tensors that do not change, copied once into a memfd sealed against
    writes (F_SEAL_WRITE): its bytes can never change again, so the daemon
    hashes a region of it once and trusts that digest for every later save
    (the kernel enforces it, not this client). The trainer's tensors are
    then made views of a private, copy-on-write mapping of it
    (`tensor_views`): reading them reads the sealed pages, and a write gives
    the trainer a private copy of the page written, which `written_pages` sees
    in /proc/self/pagemap (the page is no longer the file's). A save names
    a tensor's region only while every page of it is still the sealed one;
    otherwise the tensor is staged like any other, so what is saved is
    always what the trainer holds."""

    def __init__(self, arrays: list[np.ndarray]):
        self.offsets, end = [], 0
        for a in arrays:
            end = (end + PAGE_ALIGN - 1) // PAGE_ALIGN * PAGE_ALIGN
            self.offsets.append(end)
            end += a.nbytes
        self.size = max(PAGE_ALIGN, (end + PAGE_ALIGN - 1) // PAGE_ALIGN * PAGE_ALIGN)
        self._offsets = set(self.offsets)
        self.id = 0
        self.fd = os.memfd_create("ckptd-py-sealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, self.size)
            for a, off in zip(arrays, self.offsets):
                mv = np.ascontiguousarray(a).reshape(-1).view(np.uint8).data
                done = 0
                while done < mv.nbytes:
                    done += os.pwrite(self.fd, mv[done:], off + done)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            # Never closed: the trainer's tensors live in it (torch.frombuffer keeps it alive).
            self.map = mmap.mmap(self.fd, self.size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
            self.base = np.frombuffer(self.map, dtype=np.uint8).ctypes.data
            self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(self.fd)
            raise

    def tensor_views(self, tensors) -> list:
        """torch tensors over the private mapping, one per tensor given (same
        dtype and shape, the bytes copied in at construction)."""
        import torch

        views = []
        for t, off in zip(tensors, self.offsets):
            views.append(torch.frombuffer(self.map, dtype=t.dtype, count=t.numel(), offset=off).view(t.shape))
        return views

    def written_pages(self) -> np.ndarray:
        """Per page of the private mapping, whether it is no longer the
        sealed file's page (written here, so now the trainer's own, or
        swapped out as such): one read of /proc/self/pagemap."""
        page = mmap.PAGESIZE
        pages = (self.size + page - 1) // page
        data = os.pread(self._pagemap, pages * 8, self.base // page * 8)
        e = np.frombuffer(data, dtype=np.uint64)
        if len(e) != pages:
            return np.ones(pages, dtype=bool)
        swapped = (e & np.uint64(_PM_SWAPPED)) != 0
        private = ((e & np.uint64(_PM_PRESENT)) != 0) & ((e & np.uint64(_PM_FILE)) == 0)
        return swapped | private

    def region(self, address: int, nbytes: int, written: np.ndarray | None = None) -> int | None:
        """The offset of [address, address + nbytes) when it is one of this
        arena's tensors and none of its pages was written (`written`: from
        written_pages(), read once for a save); None otherwise."""
        off = address - self.base
        if off not in self._offsets or off + nbytes > self.size:
            return None
        if written is None:
            written = self.written_pages()
        page = mmap.PAGESIZE
        return None if written[off // page : (off + max(nbytes, 1) - 1) // page + 1].any() else off

    def close(self):
        os.close(self._pagemap)
        os.close(self.fd)


class ArenaPool:
    def __init__(self, socket_path: str, token: str, count: int = 2):
        self.socket_path = socket_path
        self.token = token
        self.count = count
        self.channel = Channel(socket_path)
        self.arenas: list[Arena] = []
        self.sealed: list[SealedArena] = []
        self._copier: ThreadPoolExecutor | None = None

    def seal(self, arrays: list[np.ndarray]) -> SealedArena:
        """A SealedArena holding `arrays`, registered with the daemon."""
        s = SealedArena(arrays)
        try:
            words, _ = self.channel.exchange("REGISTER " + self.token, s.fd)
        except BaseException:
            s.close()
            raise
        s.id = int(words[0])
        self.sealed.append(s)
        return s

    @staticmethod
    def layout(entries) -> tuple[list[int], int]:
        """Each entry's offset in an arena, and the bytes they need (entries
        in a SealedArena take none)."""
        offsets, end = [], 0
        for e in entries:
            if getattr(e, "sealed", None) is not None:
                offsets.append(e.sealed)
                continue
            align = PAGE_ALIGN if e.nbytes >= PAGE_ALIGN_MIN else ALIGN
            end = (end + align - 1) // align * align
            offsets.append(end)
            end += e.nbytes
        return offsets, max(end, 1)

    def reserve(self, need: int) -> int:
        """An arena of at least `need` bytes, created, registered and its
        pages populated now (the first save's cost moved to here); returns
        its size. A free arena that is big enough already is kept."""
        for a in self.arenas:
            if a.busy is None and a.size >= need:
                return a.size
        if len(self.arenas) >= self.count and all(a.busy is not None for a in self.arenas):
            return 0  # every arena holds a save in flight: nothing to set up now
        return self._acquire(need, wait=None).size

    def stage(self, entries, wait, threads: int, settled=None):
        """Copies the entries into a free arena; returns (arena, offsets).
        `wait(save)` waits for a save to finish; `settled(save)` asks
        whether it has, without waiting."""
        offsets, need = self.layout(entries)
        arena = self._acquire(need, wait, settled)
        # Copies are bound by memory bandwidth: more threads than half the
        # cores only contend (measured on 2 cores: 1 thread is fastest).
        copiers = max(1, min(threads, (os.cpu_count() or 2) // 2))
        if copiers > 1 and self._copier is None:
            self._copier = ThreadPoolExecutor(copiers)
        for e, off in zip(entries, offsets):
            if getattr(e, "sealed", None) is None:
                _copy(arena.view[off : off + e.nbytes], e.array, self._copier)
        arena.busy = True  # until the caller sets the SaveResult
        return arena, offsets

    def _acquire(self, need: int, wait, settled=None) -> Arena:
        # A free arena big enough; else one whose save has finished meanwhile
        # (the usual case when saves are spaced: no second arena to create
        # and populate); else a new one, or one replacing a free small one;
        # else wait for the oldest busy one.
        for a in self.arenas:
            if a.busy is None and a.size >= need:
                return a
        if settled is not None:
            for a in sorted(self.arenas, key=lambda a: getattr(a.busy, "save_id", 0)):
                if a.busy not in (None, True) and a.size >= need and settled(a.busy):
                    a.busy = None
                    return a
        free_small = [a for a in self.arenas if a.busy is None]
        if len(self.arenas) < self.count or free_small:
            if free_small:
                self.arenas.remove(free_small[0])
                free_small[0].close()
            a = Arena((need + need // 8 + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE)
            words, _ = self.channel.exchange("REGISTER " + self.token, a.fd)
            a.id = int(words[0])
            self.arenas.append(a)
            return a
        oldest = min(self.arenas, key=lambda a: a.busy.save_id if a.busy not in (None, True) else 0)
        wait(oldest.busy)
        oldest.busy = None
        return self._acquire(need, wait, settled)

    def resync(self, socket_path: str, token: str):
        """After a daemon restart: a new arena connection, every arena
        registered again (new ids; their bytes are kept)."""
        channel = Channel(socket_path)
        registered: list[Arena | SealedArena] = [*self.arenas, *self.sealed]
        for a in registered:
            words, _ = channel.exchange("REGISTER " + token, a.fd)
            a.id = int(words[0])
        self.channel.close()
        self.channel, self.socket_path, self.token = channel, socket_path, token

    def close(self):
        if self._copier is not None:
            self._copier.shutdown()
        for a in self.arenas:
            a.close()
        self.arenas.clear()
        for s in self.sealed:  # its private mapping stays: the trainer's tensors live there
            s.close()
        self.sealed.clear()
        self.channel.close()


def hot_copy(run_id: str, in_memory):
    """The daemon's in-memory copy of a run's checkpoint (hot restore), as
    described by RunInfo.in_memory: (read-only mmap, {tensor name: offset}),
    or None when it no longer keeps it."""
    if not shm_supported() or not in_memory.socket:
        return None
    try:
        channel = Channel(in_memory.socket)
    except OSError:
        return None
    try:
        words, fd = channel.exchange(f"HOT {run_id} {in_memory.step} {in_memory.key}", want_fd=True)
    except (ArenaError, OSError):
        return None
    finally:
        channel.close()
    if fd is None:
        return None
    try:
        mm = mmap.mmap(fd, int(words[0]), mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    return mm, {t.name: t.offset for t in in_memory.tensors}
