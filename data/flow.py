"""TV-L1 optical flow for the flow stage (paper Sec. 3.1: OpenCV DualTVL1, clipped to +-20).

Convention: frames are converted to grayscale, flow t maps frame t to frame t+1
(T frames give T-1 flows), values are clipped to +-FLOW_BOUND, and where quantised they are stored as
round((v + 20) * 255 / 40), the community convention (MMAction2 `flow_extraction.py`, denseflow `-b=20`).

Backends:
- "opencv": `cv2.optflow.DualTVL1OpticalFlow_create` (opencv-contrib) with OpenCV's own defaults.
  Results depend on the OpenCV version (up to 0.08 px between 4.10 and 5.0), so `flow_params_record`
  stores it next to the parameters.
- "torch": `data.tvl1_torch.tvl1_flow_batch` (batched, GPU-capable), imported only when asked for.

`map_video_flows` runs the stage over many videos in a pool of single-threaded worker processes; an
item that raises, or even kills its worker, yields its error and the others go on.
"""
from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from data.errors import BadInputError

FLOW_BOUND = 20
BACKENDS = ("opencv", "torch")

# OpenCV's defaults (opencv_contrib optflow.hpp, DualTVL1OpticalFlow::create), under our snake_case names.
TVL1_DEFAULTS: dict[str, float | int] = {
    "tau": 0.25,
    "lambda_": 0.15,
    "theta": 0.3,
    "nscales": 5,
    "warps": 5,
    "epsilon": 0.01,
    "inner_iterations": 30,
    "outer_iterations": 10,
    "scale_step": 0.8,
    "gamma": 0.0,
    "median_filtering": 5,
}
_INT_PARAMS = frozenset({"nscales", "warps", "inner_iterations", "outer_iterations", "median_filtering"})

# our name -> (keyword of DualTVL1OpticalFlow_create, setter, getter). The create() keyword really is
# spelled "innnerIterations" (three n's); "innerIterations=" raises TypeError.
_OPENCV_NAMES = {
    "tau": ("tau", "setTau", "getTau"),
    "lambda_": ("lambda_", "setLambda", "getLambda"),
    "theta": ("theta", "setTheta", "getTheta"),
    "nscales": ("nscales", "setScalesNumber", "getScalesNumber"),
    "warps": ("warps", "setWarpingsNumber", "getWarpingsNumber"),
    "epsilon": ("epsilon", "setEpsilon", "getEpsilon"),
    "inner_iterations": ("innnerIterations", "setInnerIterations", "getInnerIterations"),
    "outer_iterations": ("outerIterations", "setOuterIterations", "getOuterIterations"),
    "scale_step": ("scaleStep", "setScaleStep", "getScaleStep"),
    "gamma": ("gamma", "setGamma", "getGamma"),
    "median_filtering": ("medianFiltering", "setMedianFiltering", "getMedianFiltering"),
}

# The environment that keeps numeric libraries in a worker to one thread.
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")


# ----------------------------------------------------------------------------------------- parameters
def resolve_tvl1_params(params: dict | None = None, **overrides) -> dict[str, float | int]:
    """All effective TV-L1 parameters: OpenCV's defaults updated by `params` and `overrides`.

    Unknown names raise TypeError (a typo would otherwise silently run the defaults); values are
    coerced to int/float so the record is the same whether they came from Python, JSON or luigi.cfg.
    """
    given = dict(params or {})
    given.update(overrides)
    unknown = sorted(set(given) - set(TVL1_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown TV-L1 parameter(s) {unknown}; known: {sorted(TVL1_DEFAULTS)}")
    out = dict(TVL1_DEFAULTS)
    for name, value in given.items():
        if isinstance(value, bool):
            raise TypeError(f"TV-L1 parameter {name!r} must be a number, got {value!r}")
        if name in _INT_PARAMS:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError(f"TV-L1 parameter {name!r} must be an integer, got {value!r}")
            out[name] = int(as_float)
        else:
            out[name] = float(value)
    for name in ("tau", "lambda_", "theta", "epsilon", "nscales", "warps", "inner_iterations",
                 "outer_iterations", "median_filtering"):
        if out[name] <= 0:
            raise ValueError(f"TV-L1 parameter {name!r} must be positive, got {out[name]!r}")
    if not 0.0 < out["scale_step"] < 1.0:
        raise ValueError(f"TV-L1 parameter 'scale_step' must be in (0, 1), got {out['scale_step']!r}")
    return out


def make_tvl1(**params):
    """A `cv2.optflow.DualTVL1OpticalFlow` with OpenCV's defaults updated by `params` (our names)."""
    p = resolve_tvl1_params(params)
    return cv2.optflow.DualTVL1OpticalFlow_create(**{_OPENCV_NAMES[k][0]: v for k, v in p.items()})


def tvl1_object_params(tvl1) -> dict[str, float | int]:
    """Read the parameters back from an OpenCV DualTVL1 object (under our names)."""
    return {name: getattr(tvl1, names[2])() for name, names in _OPENCV_NAMES.items()}


def restore_scales(tvl1, nscales: int) -> None:
    """OpenCV's DualTVL1 permanently lowers its pyramid depth after an image too small for `nscales`
    levels, which would silently change every later flow of a reused object: set it back before a video."""
    if tvl1.getScalesNumber() != nscales:
        tvl1.setScalesNumber(int(nscales))


_local = threading.local()


def _cached_tvl1(params: dict):
    """One OpenCV object per thread and parameter set. Reusing it keeps its internal buffers; the
    result is bitwise the same as with a fresh object (tests/test_flow.py checks that)."""
    cache = getattr(_local, "tvl1", None)
    if cache is None:
        cache = _local.tvl1 = {}
    key = tuple(sorted(params.items()))
    obj = cache.get(key)
    if obj is None:
        if len(cache) >= 4:
            cache.clear()
        obj = cache[key] = make_tvl1(**params)
    return obj


def flow_params_record(params: dict | None = None, backend: str = "opencv") -> dict[str, Any]:
    """Everything that changes the flow bytes, flat and HDF5-attribute friendly (str/int/float)."""
    _check_backend(backend)
    rec: dict[str, Any] = {"algorithm": "tvl1", "backend": backend}
    rec.update(resolve_tvl1_params(params))
    rec.update({
        "flow_bound": FLOW_BOUND,
        "gray_conversion": "cv2.COLOR_RGB2GRAY",
        "flow_direction": "frame t -> frame t+1",
        "opencv_version": cv2.__version__,
    })
    if backend == "torch":
        import torch  # noqa: PLC0415  (only the torch backend needs it)
        rec["torch_version"] = torch.__version__
    return rec


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown flow backend {backend!r}; choose one of {BACKENDS}")


# ------------------------------------------------------------------------------------------- frames
def _to_gray(frame: np.ndarray, what: str = "frame") -> np.ndarray:
    """uint8 RGB (H, W, 3) or gray (H, W) / (H, W, 1) -> contiguous uint8 (H, W)."""
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"{what} must be RGB (H, W, 3) or gray (H, W), got shape {a.shape}")


def frames_to_gray(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB or (T, H, W) gray -> uint8 (T, H, W), in one colour conversion."""
    a = np.asarray(frames)
    if a.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {a.dtype}")
    if a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    if a.ndim == 3:
        return np.ascontiguousarray(a)
    if a.ndim != 4 or a.shape[3] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB or (T, H, W) gray, got shape {a.shape}")
    t, h, w, _ = a.shape
    if t == 0:
        return np.zeros((0, h, w), np.uint8)
    # cvtColor is per pixel, so one call on the stacked frames equals T calls, at a fraction of the cost.
    return cv2.cvtColor(np.ascontiguousarray(a).reshape(t * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(t, h, w)


# --------------------------------------------------------------------------------------------- flow
def _clip(flow: np.ndarray) -> np.ndarray:
    return np.clip(flow, -FLOW_BOUND, FLOW_BOUND, out=flow)


def _torch_flows(prev: np.ndarray, nxt: np.ndarray, params: dict, device) -> np.ndarray:
    from data.tvl1_torch import tvl1_flow_batch  # noqa: PLC0415  (torch only when asked for)

    out = np.array(tvl1_flow_batch(prev, nxt, device=device, **params), dtype=np.float32)  # a copy
    if out.shape != prev.shape + (2,):
        raise RuntimeError(f"tvl1_flow_batch returned shape {out.shape}, expected {prev.shape + (2,)}")
    return _clip(out)


def tvl1_flow(prev: np.ndarray, next: np.ndarray, backend: str = "opencv", *, tvl1=None, device=None,
              **params) -> np.ndarray:
    """Flow from `prev` to `next` (uint8 RGB or gray, same size): float32 (H, W, 2), clipped to +-20.

    `params` are TV-L1 parameters by our names (see TVL1_DEFAULTS). `tvl1` is an OpenCV object to
    reuse (then `params` must be empty); by default one cached object per thread is reused.
    `device` is passed to the torch backend.
    """
    _check_backend(backend)
    g0, g1 = _to_gray(prev, "prev"), _to_gray(next, "next")
    if g0.shape != g1.shape:
        raise ValueError(f"prev and next differ in size: {g0.shape} vs {g1.shape}")
    if backend == "torch":
        if tvl1 is not None:
            raise TypeError("tvl1= is an OpenCV object; the torch backend takes parameters")
        return _torch_flows(g0[None], g1[None], resolve_tvl1_params(params), device)[0]
    if tvl1 is not None and params:
        raise TypeError("pass either an OpenCV object (tvl1=) or parameters, not both")
    p = resolve_tvl1_params(params)
    obj = tvl1 if tvl1 is not None else _cached_tvl1(p)
    if tvl1 is None:
        restore_scales(obj, p["nscales"])
    return _clip(obj.calc(g0, g1, None))


def video_flows(frames: np.ndarray, params: dict | None = None, backend: str = "opencv", tvl1=None, *,
                device=None, torch_batch: int = 32) -> np.ndarray:
    """All T-1 flows of a clip: uint8 (T, H, W, 3) RGB (or (T, H, W) gray) -> float32 (T-1, H, W, 2).

    Frames are converted to gray once and one OpenCV object is reused for every pair (`tvl1`, or the
    thread's cached one). The torch backend gets the pairs in batches of `torch_batch`.
    """
    _check_backend(backend)
    gray = frames_to_gray(frames)
    t, h, w = gray.shape
    out = np.empty((max(t - 1, 0), h, w, 2), np.float32)
    if t < 2:
        return out
    if backend == "torch":
        if tvl1 is not None:
            raise TypeError("tvl1= is an OpenCV object; the torch backend takes parameters")
        p = resolve_tvl1_params(params)
        for s in range(0, t - 1, torch_batch):
            e = min(s + torch_batch, t - 1)
            out[s:e] = _torch_flows(gray[s:e], gray[s + 1:e + 1], p, device)
        return out
    if tvl1 is not None and params:
        raise TypeError("pass either an OpenCV object (tvl1=) or parameters, not both")
    p = resolve_tvl1_params(params)
    obj = tvl1 if tvl1 is not None else _cached_tvl1(p)
    if tvl1 is None:
        restore_scales(obj, p["nscales"])
    for i in range(t - 1):
        out[i] = obj.calc(gray[i], gray[i + 1], None)
    return _clip(out)


# ------------------------------------------------------------------------------------- process pool
class FlowWorkerError(RuntimeError):
    """A worker process died (crash, kill, out of memory) while computing one item."""


def default_workers() -> int:
    """The cores this process may run on (affinity mask, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def limit_threads(backend: str = "opencv") -> None:
    """Make this process single-threaded for numeric work (one pool worker = one core).

    torch is configured only if the backend needs it or it is already imported (a forked worker);
    an OpenCV worker never imports torch and never touches CUDA.
    """
    for var in _THREAD_ENV:
        os.environ[var] = "1"
    cv2.setNumThreads(1)
    if backend == "torch" or "torch" in sys.modules:
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work has started
            pass


def _rebuild_exception(cls, args, state):
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class _ExceptionState:
    """Sends an exception whose class cannot be rebuilt from its args (e.g. one whose __init__ takes
    (path, reason) but stores a formatted message) as class + args + attributes."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self):
        return _rebuild_exception, (type(self.exc), self.exc.args, vars(self.exc))


def _portable(exc: BaseException):
    """The exception, with the worker's traceback as a note, in a form that survives pickling; the
    parent receives an instance of the same class where at all possible."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.add_note(f"(raised in flow worker pid {os.getpid()})\n{tb}")
    for candidate in (exc, _ExceptionState(exc)):
        try:
            pickle.loads(pickle.dumps(candidate))
            return candidate
        except Exception:  # noqa: BLE001  (unpicklable class, arguments or attributes)
            continue
    out = RuntimeError(f"{type(exc).__name__}: {exc}")
    out.add_note(f"(raised in flow worker pid {os.getpid()})\n{tb}")
    return out


def _run_job(job, params, backend, tvl1, device) -> np.ndarray:
    frames = job() if callable(job) else job
    if tvl1 is not None:
        restore_scales(tvl1, resolve_tvl1_params(params)["nscales"])
    return video_flows(frames, None if tvl1 is not None else params, backend, tvl1, device=device)


def _pool_worker(conn, params: dict, backend: str, device) -> None:
    """Worker loop: receive (index, job), send (index, ok, flows or exception); None stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    limit_threads(backend)
    tvl1 = make_tvl1(**params) if backend == "opencv" else None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        idx, job = msg
        try:
            reply = (idx, True, _run_job(job, params, backend, tvl1, device))
        except Exception as exc:  # noqa: BLE001  (any item error goes back to the caller)
            reply = (idx, False, _portable(exc))
        conn.send(reply)


class _Worker:
    def __init__(self, ctx, params, backend, device):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_pool_worker, args=(child, params, backend, device),
                                   name="flow-worker", daemon=True)
        self.process.start()
        child.close()
        self.item = None  # (index, key) while busy

    def stop(self, wait: bool) -> None:
        if wait and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.conn.close()


def map_video_flows(jobs: Iterable[tuple[Any, Any]], workers: int | None = None, params: dict | None = None,
                    backend: str = "opencv", *, device=None, start_method: str = "spawn"
                    ) -> Iterator[tuple[Any, np.ndarray | BaseException]]:
    """Compute `video_flows` for many clips in a process pool; yield (key, flows or exception) as they
    finish (not in input order).

    jobs: iterable of (key, frames) where frames is uint8 (T, H, W, 3), or (key, loader) where loader is
    a picklable callable returning the frames, run inside the worker (e.g.
    `functools.partial(data.video.decode_video, path, short_side=256)`), so decoding is parallel too.
    Jobs are pulled lazily, one per idle worker, so memory stays bounded.

    workers: processes (default: the cores available); 0 runs everything in the calling process.
    Each worker is single-threaded (`limit_threads`) and reuses one OpenCV object.
    An item that raises yields its exception (with the worker's traceback as a note); an item whose
    worker dies yields FlowWorkerError and a fresh worker takes its place; the other items go on.

    start_method "spawn" (default) is safe whatever the caller holds (threads, CUDA, a Luigi task
    process) and costs about a second per worker; "fork" starts faster. Either way jobs travel
    pickled, so a loader must be importable by name (a module-level function or a partial of one,
    not a lambda); an unpicklable job yields its pickling error.
    Arguments are checked at the call, before the first result is asked for.
    """
    _check_backend(backend)
    params = resolve_tvl1_params(params)
    n = default_workers() if workers is None else int(workers)
    if n < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if n == 0:
        return _map_in_process(jobs, params, backend, device)
    return _map_in_pool(jobs, n, params, backend, device, multiprocessing.get_context(start_method))


def _map_in_pool(jobs, n, params, backend, device, ctx):
    start = functools.partial(_Worker, ctx, params, backend, device)
    pool: list[_Worker] = []
    idle: list[_Worker] = []
    job_iter = iter(jobs)
    exhausted = False
    index = 0
    try:
        while True:
            # Hand out jobs while there is an idle worker or room for a new one.
            while not exhausted and (idle or len(pool) < n):
                try:
                    key, job = next(job_iter)
                except StopIteration:
                    exhausted = True
                    break
                w = idle.pop() if idle else None
                if w is not None and not w.process.is_alive():  # died while idle: replace it
                    pool.remove(w)
                    w.stop(wait=False)
                    w = None
                if w is None:
                    w = start()
                    pool.append(w)
                try:
                    w.conn.send((index, job))
                except (pickle.PicklingError, TypeError, AttributeError) as exc:
                    # The job could not be pickled; nothing was written to the pipe.
                    idle.append(w)
                    yield key, exc
                    continue
                except OSError:
                    pass  # the worker is gone; the wait below reports the item as FlowWorkerError
                w.item = (index, key)
                index += 1
            busy = [w for w in pool if w.item is not None]
            if not busy:
                break
            waitables = {}
            for w in busy:
                waitables[w.conn] = w
                waitables[w.process.sentinel] = w
            ready = multiprocessing.connection.wait(list(waitables))
            done: list[_Worker] = []
            for obj in ready:
                w = waitables[obj]
                if w not in done:
                    done.append(w)
            for w in done:
                idx, key = w.item
                result = None
                try:
                    if w.conn.poll():
                        r_idx, ok, result = w.conn.recv()
                        assert r_idx == idx, (r_idx, idx)
                except (EOFError, OSError):
                    result = None
                if result is not None:
                    w.item = None
                    idle.append(w)
                    yield key, result
                    continue
                # No reply: the worker is gone (killed, segfault, out of memory).
                w.process.join(5)
                code = w.process.exitcode
                w.item = None
                pool.remove(w)
                w.stop(wait=False)
                yield key, FlowWorkerError(f"flow worker died (exit code {code}) while computing item {key!r}")
    finally:
        for w in pool:
            w.stop(wait=w.item is None)


def _map_in_process(jobs, params, backend, device):
    tvl1 = make_tvl1(**params) if backend == "opencv" else None
    for key, job in jobs:
        try:
            result = _run_job(job, params, backend, tvl1, device)
        except Exception as exc:  # noqa: BLE001
            result = exc
        yield key, result


# --------------------------------------------------------------------------------- quantisation, IO
def quantize_flow(flow: np.ndarray) -> np.ndarray:
    """float flow -> uint8 round((v + 20) * 255 / 40) after clipping to +-20 (the community convention,
    rounding half to even as MMAction2's np.round does). Non-finite values raise ValueError."""
    v = np.asarray(flow, dtype=np.float32)
    if not np.isfinite(v).all():
        raise ValueError("flow contains NaN or infinite values; refusing to quantise")
    v = np.clip(v, -FLOW_BOUND, FLOW_BOUND)
    return np.rint((v + np.float32(FLOW_BOUND)) * np.float32(255.0 / (2 * FLOW_BOUND))).astype(np.uint8)


def dequantize_flow(q: np.ndarray) -> np.ndarray:
    """uint8 -> float32 flow v = q * 40 / 255 - 20; within half a step (0.078 px) of the original."""
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise TypeError(f"quantised flow must be uint8, got {q.dtype}")
    return q.astype(np.float32) * np.float32(2 * FLOW_BOUND / 255.0) - np.float32(FLOW_BOUND)


FLO_MAGIC = np.float32(202021.25)


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a Middlebury .flo file -> float32 (H, W, 2) (u, v). Bad magic or size: BadInputError."""
    path = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(path, f"cannot read .flo file ({exc.strerror or exc})") from exc
    if len(raw) < 12:
        raise BadInputError(path, f"not a .flo file: {len(raw)} bytes, shorter than the 12-byte header")
    magic = np.frombuffer(raw, "<f4", 1, 0)[0]
    if magic != FLO_MAGIC:
        raise BadInputError(path, f"not a .flo file: magic {magic!r}, expected 202021.25")
    w, h = (int(x) for x in np.frombuffer(raw, "<i4", 2, 4))
    if w <= 0 or h <= 0 or w > 1 << 16 or h > 1 << 16:
        raise BadInputError(path, f"implausible .flo size {w}x{h}")
    need = 12 + w * h * 8
    if len(raw) != need:
        raise BadInputError(path, f".flo of {w}x{h} needs {need} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, "<f4", w * h * 2, 12).reshape(h, w, 2).astype(np.float32)


def endpoint_error(a: np.ndarray, b: np.ndarray, reduction: str = "mean"):
    """Endpoint error |a - b| per pixel of two (..., H, W, 2) flows: their mean (float, default) or,
    with reduction="none", the float32 per-pixel map."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape or a.shape[-1:] != (2,):
        raise ValueError(f"flows must have the same (..., 2) shape, got {a.shape} and {b.shape}")
    epe = np.sqrt(np.sum(np.square(a - b), axis=-1))
    if reduction == "none":
        return epe
    if reduction == "mean":
        return float(epe.mean(dtype=np.float64))
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


_FLOW_JPEG = re.compile(r"^([xy])_(\d+)\.jpg$")


def export_flow_jpegs(flows: np.ndarray, out_dir: str | os.PathLike, quality: int = 95,
                      start: int = 1) -> list[tuple[str, str]]:
    """Write flows (N, H, W, 2) as the community's grayscale JPEG pairs x_00001.jpg / y_00001.jpg
    (1-based, as MMAction2/denseflow rawframes), quantised with `quantize_flow`.
    Returns the (x_path, y_path) written."""
    flows = np.asarray(flows)
    if flows.ndim == 3:
        flows = flows[None]
    if flows.ndim != 4 or flows.shape[-1] != 2:
        raise ValueError(f"flows must be (N, H, W, 2), got shape {flows.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    q = quantize_flow(flows)
    written = []
    for i in range(q.shape[0]):
        pair = []
        for c, axis in enumerate("xy"):
            p = out / f"{axis}_{start + i:05d}.jpg"
            if not cv2.imwrite(str(p), np.ascontiguousarray(q[i, :, :, c]), [cv2.IMWRITE_JPEG_QUALITY, quality]):
                raise OSError(f"{p}: OpenCV could not write the JPEG")
            pair.append(str(p))
        written.append((pair[0], pair[1]))
    return written


def read_flow_jpegs(flow_dir: str | os.PathLike) -> np.ndarray:
    """Read x_NNNNN.jpg / y_NNNNN.jpg pairs of a directory -> float32 (N, H, W, 2), in frame order.
    Missing partners, gaps in the numbering and size mismatches raise BadInputError."""
    d = Path(flow_dir)
    found: dict[str, dict[int, Path]] = {"x": {}, "y": {}}
    for p in d.iterdir() if d.is_dir() else ():
        m = _FLOW_JPEG.match(p.name)
        if m:
            found[m.group(1)][int(m.group(2))] = p
    if not found["x"] and not found["y"]:
        raise BadInputError(d, "no x_NNNNN.jpg / y_NNNNN.jpg flow images found")
    if set(found["x"]) != set(found["y"]):
        odd = sorted(set(found["x"]) ^ set(found["y"]))
        raise BadInputError(d, f"flow images without their x/y partner at frame number(s) {odd[:10]}")
    nums = sorted(found["x"])
    if nums != list(range(nums[0], nums[0] + len(nums))):
        missing = sorted(set(range(nums[0], nums[-1] + 1)) - set(nums))
        raise BadInputError(d, f"gap in the flow numbering: missing {missing[:10]}")
    out = None
    for i, num in enumerate(nums):
        for c, axis in enumerate("xy"):
            p = found[axis][num]
            img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise BadInputError(p, "not a readable JPEG")
            if out is None:
                out = np.empty((len(nums),) + img.shape + (2,), np.uint8)
            if img.shape != out.shape[1:3]:
                raise BadInputError(p, f"size {img.shape} differs from the first flow image {out.shape[1:3]}")
            out[i, :, :, c] = img
    return dequantize_flow(out)


__all__ = [
    "FLOW_BOUND", "TVL1_DEFAULTS", "BACKENDS", "FlowWorkerError", "resolve_tvl1_params", "make_tvl1",
    "tvl1_object_params", "flow_params_record", "frames_to_gray", "tvl1_flow", "video_flows",
    "default_workers", "limit_threads", "map_video_flows", "quantize_flow", "dequantize_flow", "read_flo",
    "endpoint_error", "export_flow_jpegs", "read_flow_jpegs",
]
