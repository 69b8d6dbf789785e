"""Decoder state (templates, options data, sampling per exporter) persisted across restarts.

Why: OVS resends IPFIX templates only every 600 s, so a restart without state loses up to ten
minutes of flows. The state is written atomically (temporary file in the same directory, fsync,
rename, fsync of the directory) so a crash mid-write leaves the previous file intact, and a full
disk or an unwritable path is logged and counted while the collector keeps running. With
`--workers N` each worker writes `<path>.<index>` and every worker loads all of them at start,
because the kernel may hash an exporter to a different worker after a restart. Replicas may share
the file (a volume): a writer that finds it changed since its own last write (another process
wrote it) keeps what only the other knows (exporters, and the exporting processes, UDP source
ports, of exporters both know), refreshed within FOREIGN_MAX_AGE, and what the other knows more
recently (a process both have state of: the one that receives it now wins over one that held it
during a failover; the decoder's "seen" stamps, and the outvoted replica's decoder takes the
newer too, at a periodic save that has nothing to write as well), under a lock (`<path>.lock`), so each replica's templates survive the others' saves
and the file holds the newest of each process. A running replica that
meets data without its template (a failover moved the exporter to it) loads, from files another
process changed since, the templates of the exporters that missed one (`refresh_into`). An
exporting process not heard from for STATE_MAX_AGE is no longer saved (after EXPIRY_GRACE_S of
running), so one loaded at start and never heard from again is not kept for ever.
"""

from __future__ import annotations

import asyncio
import fcntl
import glob
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine
from typing import Any

import orjson

from .util import RateLimitedLog

log = logging.getLogger("flowscope.state")

# Another writer's exporters are kept while their newest template was refreshed, or data read
# with one ("seen"), this recently (an exporter alive somewhere is refreshed by the replica that
# receives it: OVS every 600 s; NetFlow v9 exporters that resend by packet count, less often).
FOREIGN_MAX_AGE = 3600.0
# Files are read for missing templates (StateFile.refresh_into) at most this often.
REFRESH_MIN_S = 30.0
# A write goes to a temporary file beside the state file, renamed over it when complete; one
# older than this was left by an interrupted write and is removed at start.
TEMP_PREFIX = ".flowscope-state."
TEMP_MAX_AGE = 3600.0
# An exporting process (exporter address and UDP source port) whose newest stamp (its templates'
# refresh, the data read with them, its withdrawal) is older than this is no longer saved: loaded
# at start and never heard from again, it was saved again at every save and loaded again at every
# start, forever. Its exporter has gone (OVS resends templates every 600 s, so one that comes
# back sends them again within minutes: the loss is what a restart without a state file loses).
# Not in the first EXPIRY_GRACE_S after start: a collector stopped for longer than that keeps
# its file until its exporters are heard again. (The decoder keeps them: only the file forgets.)
STATE_MAX_AGE = 7 * 86400.0
EXPIRY_GRACE_S = 3600.0
# A time in a state file (a template's "refreshed", a "seen" or "withdrawn" stamp) later than
# this far ahead of now is no time: Decoder.import_state refuses it (a writer whose clock was
# wrong, or a damaged file), and a merge must too, or such a stamp outvotes every later save.
AHEAD_MAX_S = 86400.0


class StateFile:
    """Periodic atomic saves of `decoder.export_state()`; `load_into` at start."""

    def __init__(self, path: str, worker: int | None) -> None:
        self.path = path if worker is None else f"{path}.{worker}"
        self.base = path
        self._first = worker in (None, 0)   # removes abandoned files (_find_abandoned)
        self._abandoned: list[tuple[str, float]] = []
        self.saves = {"ok": 0, "error": 0}
        self.loads = {"ok": 0, "error": 0, "missing": 0, "refresh": 0}
        self._last: bytes | None = None
        self._rl = RateLimitedLog(log, 30.0)
        self._lock = threading.Lock()
        self._gen = 0           # exports handed to _write, numbered
        self._written_gen = 0   # the latest of them written
        self._mine: tuple[int, int, int] | None = None   # (inode, size, mtime_ns) of our own last write
        self._stopping: tuple[int, int, int] | None = None   # that of the save as the stop began
        # file -> (its stamp when last read by refresh_into or at start, the exporters looked for)
        self._seen: dict[str, tuple[tuple[int, int, int], set[str]]] = {}
        self._foreign = False                            # our last write kept another writer's state
        self._other: bytes | None = None                 # the other writer's file our last merge read
        self._read: tuple[int, int, int] | None = None   # (inode, size, mtime_ns) of that file then
        # what our last merge took of processes the other writer knows more recently (they went
        # back to it after a failover), as a state: for our decoder too (_adopt_into)
        self._adopt: dict[str, Any] | None = None
        self._missed: dict[str, int] = {}                # exporter -> missing template sets when last refreshed
        self._refreshed_at = 0.0                         # monotonic time of its latest file read
        self._started = time.time()                      # (STATE_MAX_AGE applies EXPIRY_GRACE_S after)
        # (the last export, what it was before STATE_MAX_AGE left processes out, and the cutoff)
        self._full: tuple[bytes, bytes, float] | None = None
        # Who saves the sequence state (save's `sequences`): only a collector on the same host
        # goes on with it (its workers all load it: the kernel may give an exporter to another
        # worker after a restart); a replica sharing the file never does (see load_into).
        self.writer = socket.gethostname()
        self.sequence_loads = {"exporters": 0, "skipped": 0}

    def candidates(self) -> list[str]:
        """Every file a previous run (with any worker count) may have written, oldest first:
        each file loaded replaces what an earlier one said of the same exporter, so the newest
        save wins (an exporter may have moved to another worker, or the worker count changed)."""
        out = [self.base] if os.path.exists(self.base) else []
        out += [p for p in glob.glob(glob.escape(self.base) + ".*") if p.rsplit(".", 1)[-1].isdigit()]

        def mtime(p: str) -> float:
            try:
                return os.stat(p).st_mtime
            except OSError:
                return 0.0

        return sorted(out, key=lambda p: (mtime(p), p))

    def load_into(self, decoder: Any) -> None:
        self._remove_stale_temps()
        files = self.candidates()
        if not files:
            self.loads["missing"] += 1
            log.info("state: %s does not exist yet; starting without templates", self.base)
            return
        for p in files:
            try:
                with open(p, "rb") as fh:
                    data = orjson.loads(fh.read())
                got = decoder.import_state(data)
            except Exception as exc:  # a corrupt or foreign file must not stop the collector
                self.loads["error"] += 1
                log.error("state: cannot load %s: %s (continuing without it)", p, exc)
                continue
            self.loads["ok"] += 1
            self._load_sequences(decoder, p, data)
            if got.get("skipped"):
                log.warning("state: loaded %s: %d templates, %d bad entries skipped", p, got.get("templates", 0),
                            got["skipped"])
            else:
                log.info("state: loaded %s: %d templates", p, got.get("templates", 0))
        self._find_abandoned(files)

    def _load_sequences(self, decoder: Any, path: str, data: Any) -> None:
        """The sequence state a final save of this host wrote in the file (save's `sequences`),
        into the decoder: the exporters' sequence streams go on where they were, so that a
        restart neither forgets what a numbering still undecided adds once its votes decide, nor
        misses what an exporter sent while the collector was down (a gap) or its restart
        meanwhile. Another host's (a replica sharing the file) is not taken: this process did not
        receive what that one counted."""
        seqs = data.get("sequences") if isinstance(data, dict) else None
        if not isinstance(seqs, dict) or seqs.get("writer") != self.writer:
            return
        try:
            # (the open gaps a save as a stop began carries are counted by the worker that wrote
            # them only: every worker loads every file, and each would count them)
            got = decoder.import_sequences(seqs.get("exporters"), gaps=path == self.path)
        except Exception as exc:  # (as a bad file: the collector goes on without it)
            self.sequence_loads["skipped"] += 1
            log.error("state: cannot load the sequence state in %s: %s (sequences start over)", path, exc)
            return
        self.sequence_loads["exporters"] += got["exporters"]
        self.sequence_loads["skipped"] += got["skipped"]
        if got["skipped"]:
            log.warning("state: %s: sequence state of %d exporter(s) loaded, %d bad entries skipped", path,
                        got["exporters"], got["skipped"])

    def _find_abandoned(self, files: list[str]) -> None:
        """Files no process writes any more: the worker files of an earlier run with more workers
        (`<path>.3` after `--workers 4` became 2), or `<path>` itself after one worker became
        several. They were loaded at every start for ever. One not written for STATE_MAX_AGE
        while another file was written since (every exporting process it holds is then older
        than STATE_MAX_AGE, so no save keeps it) is removed by the first worker after its first
        write: every worker has loaded it by then. A collector stopped for longer than that
        (every file as old) keeps them all, as it keeps its exporters (see STATE_MAX_AGE)."""
        if not self._first:
            return
        stamps = {}
        for p in files:
            try:
                stamps[p] = os.stat(p).st_mtime
            except OSError:
                continue
        horizon = time.time() - STATE_MAX_AGE
        if not stamps or max(stamps.values()) < horizon:
            return
        self._abandoned = [(p, m) for p, m in stamps.items() if p != self.path and m < horizon]

    def _remove_abandoned(self) -> None:
        """(after a write; see _find_abandoned) Those still as they were when loaded."""
        gone, self._abandoned = self._abandoned, []
        for p, mtime in gone:
            try:
                if os.stat(p).st_mtime != mtime:
                    continue    # written since: not abandoned after all
                os.unlink(p)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("state: cannot remove %s, not written for %.0f days: %s", p,
                            (time.time() - mtime) / 86400, exc)
                continue
            log.info("state: removed %s: not written for %.0f days while other state files were (a file "
                     "of an earlier run's worker count)", p, (time.time() - mtime) / 86400)

    def _remove_stale_temps(self) -> None:
        """The temporary files of writes a crash (or a full disk) interrupted: nothing else removes
        them, and each may be as large as the state. Only those older than TEMP_MAX_AGE go: a
        replica sharing the directory may be writing one now (a write takes well under a second)."""
        d = os.path.dirname(os.path.abspath(self.path))
        horizon = time.time() - TEMP_MAX_AGE
        removed = 0
        for p in glob.glob(os.path.join(glob.escape(d), TEMP_PREFIX + "*")):
            try:
                if os.stat(p).st_mtime < horizon:
                    os.unlink(p)
                    removed += 1
            except OSError:
                continue    # gone meanwhile, or not ours to remove
        if removed:
            log.info("state: removed %d temporary file(s) left in %s by interrupted writes", removed, d)

    def unread(self, wanted: set[str]) -> list[str]:
        """Files that may hold what this process lacks for the wanted exporters: written by
        another process since it last read them (or by itself, when that write kept what another
        writer had saved there), or read then for other exporters only."""
        out = []
        for p in self.candidates():
            st = _stamp(p)
            if st is None or (p == self.path and st == self._mine and not self._foreign):
                continue
            seen = self._seen.get(p)
            if seen is not None and seen[0] == st and wanted <= seen[1]:
                continue
            out.append(p)
        return out

    @staticmethod
    def read_exporters(paths: list[str], wanted: set[str]) -> list[tuple[str, tuple[int, int, int] | None, Any]]:
        """(file, stamp, its state cut down to the wanted exporters, or None when it names none of
        them) for each file: run in a thread. A file that does not mention a wanted exporter's
        address is not parsed (orjson holds the GIL: tens of MB take the event loop a second)."""
        out: list[tuple[str, tuple[int, int, int] | None, Any]] = []
        keys = [orjson.dumps(ip) + b":" for ip in wanted]
        for p in paths:
            st = _stamp(p)
            try:
                with open(p, "rb") as fh:
                    raw = fh.read()
                if not any(k in raw for k in keys):
                    out.append((p, st, None))
                    continue
                data = orjson.loads(raw)
                exporters = data.get("exporters") if isinstance(data, dict) else None
                if not isinstance(exporters, dict):
                    raise ValueError("no exporters")
                out.append((p, st, {"format": data.get("format"),
                                    "exporters": {ip: e for ip, e in exporters.items() if ip in wanted}}))
            except (OSError, ValueError) as exc:
                out.append((p, st, exc))
        return out

    async def refresh_into(self, decoder: Any) -> int:
        """Load, from the files another process changed since, the templates of exporters that
        met data without a template since the last refresh: a replica sharing the file took over
        an exporter from one that went away, whose templates it saved (OVS resends them only
        every 10 minutes). Only what this process lacks is taken (a template it knows from a
        later refresh stays, and rates and clocks it learned stay: import_state's only_missing).
        At most every REFRESH_MIN_S. Returns the templates loaded."""
        misses = decoder.template_misses()
        # (a count below the one handled: the exporter was evicted and came back, counting anew)
        wanted = {ip for ip, n in misses.items() if n != self._missed.get(ip, 0)}
        if not wanted:
            return 0
        if time.monotonic() - self._refreshed_at < REFRESH_MIN_S:
            return 0
        paths = self.unread(wanted)
        if not paths:
            return 0    # (the misses stay wanted: a file another replica writes later may hold them)
        self._refreshed_at = time.monotonic()
        self._missed = {ip: misses[ip] for ip in misses}    # handled (bounded by the exporters known)
        loaded = 0
        # Several files may describe an exporter (worker files; one a copy another process took
        # and keeps saving, or left by an earlier run): they are combined first as at start (of
        # each template the latest definition, of each exporting process the newest knowledge,
        # whatever the files' order), and only then is what this process lacks taken: taken file
        # by file, the first file naming a template won, an older one if it came first.
        combined = type(decoder)(decoder.config)
        for p, st, data in await asyncio.to_thread(self.read_exporters, paths, wanted):
            if st is not None:
                seen = self._seen.get(p)
                self._seen[p] = (st, (seen[1] | wanted) if seen is not None and seen[0] == st else set(wanted))
            if isinstance(data, Exception):
                self.loads["error"] += 1
                self._rl.warning("refresh", "state: cannot read %s for templates another replica saved: %s", p, data)
                continue
            self.loads["refresh"] += 1
            if not data or not data["exporters"]:
                continue
            try:
                combined.import_state(data)
            except Exception as exc:
                self.loads["error"] += 1
                self._rl.warning("refresh", "state: cannot load %s: %s", p, exc)
                continue
        state = combined.export_state()
        if state["exporters"]:
            try:
                loaded = decoder.import_state(state, only_missing=True).get("templates", 0)
            except Exception as exc:
                self.loads["error"] += 1
                self._rl.warning("refresh", "state: cannot load the templates other processes saved: %s", exc)
        if loaded:
            log.info("state: %d templates of %d exporter(s) that sent data without them loaded from the shared "
                     "state (saved by another replica or worker)", loaded, len(wanted))
        return loaded

    def save(self, decoder: Any, sequences: bool = False) -> bool:
        """Export and write now (at shutdown), unchanged or not: a periodic write still in its
        thread may hold older state than what is on disk, and must not be the last word (the
        generation check then skips it). `sequences` (the final save at shutdown): with the
        exporters' sequence state (Decoder.export_sequences) and who wrote it, for the next start
        on this host (_load_sequences); periodic saves leave it out, as after a crash it would be
        older than what the crashed run received and counted."""
        data = self._export(decoder, sequences)
        if data is None:
            return False
        ok = self._write(data, self._next_gen())
        self._adopt_into(decoder)
        return ok

    def save_stopping(self, decoder: Any) -> Coroutine[Any, Any, bool] | None:
        """The save as a stop begins (Worker.stop: once nothing more is decoded, before the sink
        drains), with the sequence state as the final save has it: a process killed before its
        final save (SIGKILL past a Kubernetes grace period shorter than the drain) then leaves a
        file the next start goes on from (without one its streams started over, and what the
        exporters sent meanwhile was never counted). Exported now, on the event loop, so that
        every datagram read after this call is after the save; the write, the coroutine
        returned (None: the export failed), runs in a thread while the sink drains, and the
        final save, a later generation, replaces it. It changes nothing in the decoder
        (Decoder.export_sequences' hand_over): the final save counts the gaps then still open
        and hands the held losses over."""
        data = self._export(decoder, sequences=True, hand_over=False)
        if data is None:
            return None
        return self._stopping_written(decoder, data, self._next_gen())

    async def _stopping_written(self, decoder: Any, data: bytes, gen: int) -> bool:
        ok = await self._written(decoder, data, gen)
        if ok:
            self._stopping = self._mine
        return ok

    def holds_stopping(self) -> bool:
        """The file is still the save as the stop began (save_stopping): it was written, and
        neither a later save of ours (the final one) nor another writer's replaced it since. The
        next start on this host then goes on from it (a final save that failed: a full disk)."""
        return self._stopping is not None and self._stamp() == self._stopping

    async def save_async(self, decoder: Any) -> bool:
        """Export on the event loop (the decoder is not thread-safe), write and fsync in a thread:
        a slow disk (a network volume) must not stop the worker's loop, which would also stop its
        metrics and make the supervisor take it for hung."""
        data = self._export(decoder)
        if data is None:
            return False
        if data is self._last:
            # Nothing to write; but another writer may have saved newer knowledge of processes
            # this one has state of: a standby replica that receives nothing after a failback
            # must take it too (_adopt_into), or at the next failover it reads the exporter's
            # data with the templates it held, though redefined or withdrawn since. The file
            # holds what it takes, so this is no change to write (an idle replica does not
            # rewrite the file).
            if self._stamp() not in (None, self._mine, self._read):
                await asyncio.to_thread(self._merge_only, data)
                if self._adopt is not None:
                    # (unless the decoder changed while the file was read: that is to write)
                    unchanged = self._export(decoder) is self._last
                    self._adopt_into(decoder)
                    if unchanged:
                        self._last = self._export(decoder) or self._last
            return True
        return await self._written(decoder, data, self._next_gen())

    async def _written(self, decoder: Any, data: bytes, gen: int) -> bool:
        """Write and fsync `data` as generation `gen` in a thread, then take into the decoder what
        the write's merge found newer (_adopt_into, on the event loop)."""
        ok = await asyncio.to_thread(self._write, data, gen)
        self._adopt_into(decoder)
        return ok

    def _merge_only(self, data: bytes) -> None:
        """Merge the file another writer changed with our unchanged state, for what to adopt."""
        with self._lock:
            self._merged(data)

    def _adopt_into(self, decoder: Any) -> None:
        """Take into the decoder (on the event loop: it is not thread-safe) what the last merge
        found another writer knows more recently of processes this one has state of: a replica
        that held an exporter during a failover otherwise kept its templates in memory, and when
        the exporter failed over to it again read its data with them though the exporter had
        redefined or withdrawn them since (RFC 7011 8, 8.1); it had a template, so it did not
        look in the file. (import_state keeps what the decoder learned later still.)"""
        adopt, self._adopt = self._adopt, None
        if adopt is None:
            return
        try:
            decoder.import_state(adopt)
        except Exception as exc:
            self.loads["error"] += 1
            self._rl.warning("adopt", "state: cannot take what another replica saved more recently: %s", exc)

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _export(self, decoder: Any, sequences: bool = False, hand_over: bool = True) -> bytes | None:
        """The decoder's state as bytes; `self._last` itself when it has not changed."""
        try:
            state = decoder.export_state()
            now = time.time()
            if sequences:
                # (beside "exporters": older versions, and the expiry and merges of the exporters'
                # entries, ignore it; a merge keeps the writer's own, never another writer's)
                state["sequences"] = {"writer": self.writer, "saved": now,
                                      "exporters": decoder.export_sequences(hand_over)}
            data = orjson.dumps(state)
            self._full = None
            if now - self._started >= EXPIRY_GRACE_S and _expire(state, now - STATE_MAX_AGE):
                # (the decoder still has what was left out: a merge takes, for its processes too,
                # what another writer knows more recently into the decoder, _merged)
                full, data = data, orjson.dumps(state)
                self._full = (data, full, now - STATE_MAX_AGE)
        except Exception as exc:
            self.saves["error"] += 1
            self._rl.error("export", "state: cannot export decoder state: %s", exc)
            return None
        return self._last if data == self._last and self._last is not None else data

    def _write(self, data: bytes, gen: int) -> bool:
        """Write atomically (temporary file, fsync, rename, fsync of the directory). Writes are
        serialised, and one older than a write already done is skipped, so a periodic write
        still in its thread cannot replace the final save of a shutdown with older state."""
        with self._lock:
            if gen <= self._written_gen:
                return True
            lock = self._lock_file()
            try:
                merged = self._merged(data)
                # (what another writer saved, kept in our file, is for refresh_into to read too)
                self._foreign = merged is not data
                ok = self._write_file(merged)
            finally:
                if lock is not None:
                    os.close(lock)
            if ok:
                self._written_gen = gen
                self._last = data
                if self._abandoned:
                    self._remove_abandoned()
            return ok

    def _lock_file(self) -> int | None:
        """An exclusive lock on `<path>.lock` for a read-merge-write (None when it cannot be had:
        the write goes on unlocked, as a single writer's always could)."""
        try:
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _stamp(self) -> tuple[int, int, int] | None:
        return _stamp(self.path)

    def _merged(self, data: bytes) -> bytes:
        """Our state plus what another writer of the file knows that we do not (or knew later).
        The file is read when another process wrote it since our last write; when it is our own
        last write, what the other wrote then (read at our last merge) is merged again: ours alone
        would drop the other's exporters from the file at our second save, those of a replica
        that went away for good (a failover then finds nothing to take). Anything unreadable there
        is left out: ours is written."""
        self._adopt = None
        stamp = self._stamp()
        if stamp is None:
            return data
        try:
            if stamp != self._mine:
                with open(self.path, "rb") as fh:
                    self._other = fh.read()
                self._read = stamp
            if self._other is None:
                return data
            other = orjson.loads(self._other)
            # the processes left out for their age are merged too (another writer may know them
            # more recently: the decoder takes that, _adopt), and left out again after
            full = self._full if self._full is not None and self._full[0] == data else None
            mine = orjson.loads(data if full is None else full[1])
            theirs = (other.get("exporters") if isinstance(other, dict) and other.get("format") == mine.get("format")
                      else None)
            if not isinstance(theirs, dict):
                return data
            horizon = time.time() - FOREIGN_MAX_AGE
            added = 0
            adopted: dict[str, Any] = {}
            for ip, ent in theirs.items():
                if not isinstance(ent, dict):
                    continue
                tpls = ent.get("templates")
                if not isinstance(tpls, list):
                    continue
                if ip not in mine["exporters"]:
                    # (alive: a template refreshed, or data read with one, "seen", that recently)
                    newest = max([_time(t.get("refreshed", 0)) for t in tpls if isinstance(t, dict)]
                                 + list(_stamps(ent, "seen").values()), default=0)
                    if newest >= horizon:
                        mine["exporters"][ip] = ent
                        added += 1
                    continue
                adopt: dict[str, Any] = {}
                before = orjson.dumps(mine["exporters"][ip])
                try:
                    added += _merge_exporter(mine["exporters"][ip], ent, horizon, adopt)
                except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                    # one malformed entry (an unhashable port, a wrong type) leaves out that
                    # exporter's foreign state, ours of it as it was: not every other exporter's
                    mine["exporters"][ip] = orjson.loads(before)
                    self._rl.warning("merge", "state: %s: exporter %s is malformed in the file another process "
                                     "wrote; what it says of it is left out", self.path, ip)
                    continue
                if adopt:
                    adopted[ip] = adopt
            if adopted:
                self._adopt = {"format": mine.get("format"), "exporters": adopted}
            if not added:
                return data
            if full is not None:
                _expire(mine, full[2])
            return orjson.dumps(mine)
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            return data

    def _write_file(self, data: bytes) -> bool:
        d = os.path.dirname(os.path.abspath(self.path))
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=d)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            tmp = None
            self._mine = self._stamp()
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            self.saves["error"] += 1
            self._rl.error("write", "state: cannot write %s: %s (still running; templates will be "
                           "relearned after a restart)", self.path, exc)
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.saves["ok"] += 1
        return True


def _stamp(path: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file: a rename over it, or a rewrite, changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


_OPTION_LISTS = ("domain_sampling", "sampler_rates", "interface_rates", "egress_rates", "template_rates",
                 "interface_names", "sysinit_ms")


def _time(when: Any) -> float:
    """A time from a state file, 0 (no time) when it is not a number or later than AHEAD_MAX_S
    from now (as Decoder.import_state refuses it)."""
    if isinstance(when, (int, float)) and 0 <= when <= time.time() + AHEAD_MAX_S:
        return float(when)
    return 0.0


def _stamps(ent: dict, name: str) -> dict[Any, float]:
    """{UDP source port: time} of an exporter entry's "seen" or "withdrawn" list (bad entries,
    and times import_state refuses, left out; the latest time where a port appears twice)."""
    out: dict[Any, float] = {}
    for e in ent.get(name, []) if isinstance(ent.get(name), list) else []:
        if isinstance(e, list) and len(e) == 2 and _time(e[1]):
            try:
                out[e[0]] = max(e[1], out.get(e[0], e[1]))
            except TypeError:   # (an unhashable port)
                continue
    return out


def _expire(state: dict, cutoff: float) -> bool:
    """Leave out of an export the exporting processes whose newest stamp ("seen", which covers
    their templates' refresh, or "withdrawn") is older than `cutoff`, and exporters with nothing
    left (or nothing ever: NetFlow v5 and sFlow exporters, which would be loaded at every start
    as empty entries). (A process with options-learned entries only has no stamp: it stays.)
    True when anything was left out."""
    exporters = state["exporters"]
    out = False
    for ip, ent in list(exporters.items()):
        if not isinstance(ent, dict):
            continue
        stamps = _stamps(ent, "seen")
        for p, when in _stamps(ent, "withdrawn").items():
            stamps[p] = max(when, stamps.get(p, 0.0))
        gone = {p for p, when in stamps.items() if when < cutoff}
        if gone:
            for name in ("templates", *_OPTION_LISTS):
                if isinstance(ent.get(name), list):
                    ent[name] = [e for e in ent[name] if not _in(_port_of(e), gone)]
            for name in ("seen", "withdrawn"):
                if isinstance(ent.get(name), list):
                    ent[name] = [e for e in ent[name] if not (isinstance(e, list) and e and _in(e[0], gone))]
            out = True
        if not any(ent.get(name) for name in ("templates", "withdrawn", *_OPTION_LISTS)):
            del exporters[ip]
            out = True
    return out


def _in(port: Any, ports: set[Any]) -> bool:
    try:
        return port in ports
    except TypeError:   # (an unhashable port: another writer's bad entry)
        return False


def _port_of(entry: Any) -> Any:
    """The UDP source port of a template (a dict) or an options-learned entry (format 2 and 3:
    version, domain, port, ..., value); None for anything else."""
    if isinstance(entry, dict):
        return entry.get("port", 0)
    return entry[2] if isinstance(entry, list) and len(entry) > 3 else None


def _merge_exporter(mine: dict, theirs: dict, horizon: float, adopt: dict | None = None) -> int:
    """Another writer's state of an exporter this one knows too, per exporting process (UDP
    source port), the newest knowledge of each winning. A process this one has nothing of: the
    other's templates refreshed (or read data, "seen") within FOREIGN_MAX_AGE join ours, with
    their options-learned entries (and a withdrawal that recent is kept). A process both have
    state of is the one's that knows it more recently ("seen", and "withdrawn", by the decoder:
    the latest of its templates' refresh, of the data read with them, of its withdrawal): the
    replica that receives it, not one that held it during a failover and still has those
    templates in memory (RFC 7011 8 and 8.1: the process may have redefined or withdrawn them
    since). The other's state of such a process replaces ours whole (templates, entries,
    stamps); ours stays on a tie, or when the other's file has no stamps (an older version). Of
    a process that withdrew its last template here, only templates the other received after
    the withdrawal are taken. Returns how many entries were taken; `adopt` gets what ours now
    says of the processes the other knew more recently (for this writer's decoder too)."""
    ports = {t.get("port", 0) for t in mine.get("templates", []) if isinstance(t, dict)}
    for name in _OPTION_LISTS:
        ports |= {e[2] for e in mine.get(name, []) if isinstance(e, list) and len(e) > 3}
    withdrawn = _stamps(mine, "withdrawn")
    their_withdrawn = _stamps(theirs, "withdrawn")
    my_seen, their_seen = _stamps(mine, "seen"), _stamps(theirs, "seen")
    # processes both have state of that the other knows more recently: theirs replaces ours
    newer = {p for p in ports | set(withdrawn)
             if max(their_seen.get(p, 0), their_withdrawn.get(p, 0))
             > max(my_seen.get(p, 0), withdrawn.get(p, 0))}
    added = 0
    if newer & ports:
        for name in ("templates", *_OPTION_LISTS):
            if isinstance(mine.get(name), list):
                mine[name] = [e for e in mine[name] if _port_of(e) not in newer]
        ports -= newer
        added += 1      # (ours changed even when the other has nothing left of them)
    taken: set[Any] = set()
    for t in theirs.get("templates", []):
        if not isinstance(t, dict) or t.get("port", 0) in ports:
            continue
        when = t.get("refreshed", 0)
        gone = withdrawn.get(t.get("port", 0))
        if isinstance(gone, (int, float)) and isinstance(when, (int, float)) and when <= gone:
            continue    # the copy from before the process withdrew it
        if t.get("port", 0) in newer or (isinstance(when, (int, float))
                                         and max(_time(when), their_seen.get(t.get("port", 0), 0)) >= horizon):
            mine.setdefault("templates", []).append(t)
            taken.add(t.get("port", 0))
            added += 1
    for name in _OPTION_LISTS:
        theirs_e = theirs.get(name)
        if not isinstance(theirs_e, list) or not isinstance(mine.setdefault(name, []), list):
            continue
        for e in theirs_e:      # (format 2 and 3 entries: version, domain, port, ..., value)
            if isinstance(e, list) and len(e) > 3 and e[2] in taken:
                mine[name].append(e)
                added += 1
    # the stamps go with what they describe: a withdrawal this one did not know of (as recent
    # as a foreign template would have to be, so none is kept forever) or newer than its own
    for p, when in their_withdrawn.items():
        if p in taken or p in ports or when <= withdrawn.get(p, -1.0):
            continue
        if p in newer or (p not in withdrawn and when >= horizon):
            withdrawn[p] = when
            added += 1
    for p in taken:
        withdrawn.pop(p, None)          # the process has templates again
        if p in their_seen:
            my_seen[p] = their_seen[p]
    for p in newer:
        if p not in taken:
            my_seen.pop(p, None)
    if added:
        mine["withdrawn"] = [[p, w] for p, w in withdrawn.items()]
        mine["seen"] = [[p, w] for p, w in my_seen.items()]
    if adopt is not None and newer:
        adopt.update({name: [e for e in mine.get(name, []) if _port_of(e) in newer]
                      for name in ("templates", *_OPTION_LISTS)})
        adopt["withdrawn"] = [[p, w] for p, w in withdrawn.items() if p in newer]
        adopt["seen"] = [[p, w] for p, w in my_seen.items() if p in newer]
    return added
