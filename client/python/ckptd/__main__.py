"""python -m ckptd ls|latest|show|inspect|verify|lineage: the read-only ckptctl commands."""

from __future__ import annotations

import argparse
import json
import sys

from . import gguf
from .client import Error, connect
from .reader import Checkpoint, DigestMismatch
from .v1 import ckptd_pb2 as pb


def _fmt(v, limit=8):
    if isinstance(v, list) and len(v) > limit:
        return json.dumps(v[:limit])[:-1] + f", ... ({len(v)} items)]"
    return json.dumps(v)


def cmd_ls(args):
    client = connect(args.socket)
    if not args.run:
        for r in client.stub.ListRuns(pb.ListRunsRequest()).runs:
            last = r.last_step if r.HasField("last_step") else "-"
            print(f"{r.run_id}\t{pb.RunState.Name(r.state)[10:].lower()}\tlast_step={last}\t"
                  f"checkpoints={r.checkpoint_count}\t{r.run_dir}")
        return 0
    token = ""
    while True:
        resp = client.stub.ListCheckpoints(pb.ListCheckpointsRequest(run_id=args.run, page_token=token))
        for c in resp.checkpoints:
            flags = ("latest " if c.is_latest else "") + ("pinned " if c.pinned else "")
            metrics = " ".join(f"{k}={v:g}" for k, v in sorted(c.metrics.items()))
            print(f"{c.step}\t{c.size_bytes + c.train_size_bytes}\t{c.time_utc}\t{flags.strip()}\t{metrics}")
        token = resp.next_page_token
        if not token:
            return 0


def cmd_latest(args):
    info = connect(args.socket).stub.GetRun(pb.GetRunRequest(run_id=args.run))
    if not info.HasField("last_step"):
        print(f"run '{args.run}' has no checkpoint yet", file=sys.stderr)
        return 1
    print(info.latest_file)
    return 0


def cmd_show(args):
    c = connect(args.socket)
    step = args.step
    if step is None:
        info = c.stub.GetRun(pb.GetRunRequest(run_id=args.run))
        if not info.HasField("last_step"):
            print(f"run '{args.run}' has no checkpoint yet", file=sys.stderr)
            return 1
        step = info.last_step
    d = c.stub.GetCheckpoint(pb.GetCheckpointRequest(run_id=args.run, step=step)).info
    print(f"step {d.step}\nfile {d.file}\ntrain_file {d.train_file or '-'}\nuuid {d.uuid}\n"
          f"content_digest {d.content_digest}\ntime {d.time_utc}\ntensors {d.tensor_count}\n"
          f"bytes {d.size_bytes + d.train_size_bytes}")
    for k, v in sorted(d.metrics.items()):
        print(f"metric {k} {v:g}")
    return 0


def cmd_inspect(args):
    f = gguf.read_header(args.path)
    if args.json:
        print(json.dumps({"metadata": f.metadata, "tensors": [
            {"name": t.name, "type": gguf.TENSOR_TYPES[t.type][0], "ne": t.ne, "offset": t.offset,
             "nbytes": t.nbytes, "digest": t.digest} for t in f.tensors]}, indent=1))
        return 0
    print(f"GGUF v{f.version}, {len(f.metadata)} keys, {len(f.tensors)} tensors, "
          f"alignment {f.alignment}, data at {f.data_offset}")
    for k, v in f.metadata.items():
        print(f"  {k} = {_fmt(v)}")
    for t in f.tensors:
        print(f"  {t.name}\t{gguf.TENSOR_TYPES[t.type][0]}\t{t.ne}\t{t.nbytes}")
    return 0


def cmd_verify(args):
    if not gguf.hasher.available:
        print("verify needs XXH3: install python3-xxhash (or libxxhash0)", file=sys.stderr)
        return 2
    with Checkpoint(args.path, "" if args.model_only else None, verify=True) as c:
        for t in c.tensors():
            import numpy as np

            c.read_into(t.name, np.empty(t.nbytes, dtype=np.uint8))
        print(f"OK {args.path}: {len(c.tensors())} tensors, {c.bytes_read} bytes match their digests"
              + (f" (with {c.train.path})" if c.train else ""))
    return 0


def _label(n) -> str:
    kind = pb.LineageNode.Kind.Name(n.kind)[5:].lower()
    if kind == "base_model":
        return f"base model {n.uuid}"
    if kind == "export":
        return f"export {n.name} ({n.profile})  {n.uuid[:8]}" + (f"  [latest.{n.name}]" if n.is_latest else "")
    if kind == "gone":
        return f"{n.run_id} deleted checkpoint  {n.uuid[:8]}"
    return (f"{n.run_id} step {n.step}  {n.uuid[:8]}  {n.time_utc}" + ("  [latest]" if n.is_latest else "")
            + ("  [pinned]" if n.pinned else ""))


def _same_content(n) -> str:
    return f"  [same content as {', '.join(n.same_content)}]" if n.same_content else ""


def cmd_lineage(args):
    """The tree of ancestors and descendants, one node per line, indented under its parent."""
    target = args.target or ""
    looks_uuid = len(target) == 36 and target.count("-") == 4
    lineage = connect(args.socket).lineage(uuid=target if looks_uuid else "", run_id="" if looks_uuid else target)
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(lineage, preserving_proto_field_name=True))
        return 0
    export = pb.LineageNode.KIND_EXPORT
    present = {n.id for n in lineage.nodes}
    children: dict[str, list] = {}
    roots = []
    for n in lineage.nodes:
        if not n.parent_id or n.parent_id not in present:
            roots.append(n)
        else:
            children.setdefault(n.parent_id, []).append(n)
    printed: set[str] = set()

    def show(n, depth):
        # A run's checkpoints stay in one column; exports and other runs indent.
        while n is not None and n.id not in printed:
            printed.add(n.id)
            print("  " * depth + _label(n) + _same_content(n))
            kids = children.get(n.id, [])
            nxt = next((c for c in kids if c.kind != export and c.run_id == n.run_id and n.run_id), None)
            for c in kids:
                if c is not nxt:
                    show(c, depth + 1)
            n = nxt

    for r in roots:
        show(r, 0)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ckptd", description=__doc__)
    p.add_argument("--socket", help="daemon address (default: $CKPTD_SOCKET, else the dev socket)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ls", help="runs, or a run's checkpoints")
    s.add_argument("run", nargs="?")
    s.set_defaults(fn=cmd_ls)
    s = sub.add_parser("latest", help="path of a run's latest checkpoint")
    s.add_argument("run")
    s.set_defaults(fn=cmd_latest)
    s = sub.add_parser("show", help="one checkpoint of a run (default: latest)")
    s.add_argument("run")
    s.add_argument("step", nargs="?", type=int)
    s.set_defaults(fn=cmd_show)
    s = sub.add_parser("inspect", help="metadata and tensors of a GGUF file")
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_inspect)
    s = sub.add_parser("verify", help="re-read a checkpoint and check every digest")
    s.add_argument("path")
    s.add_argument("--model-only", action="store_true", help="skip the training-state file")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("lineage", help="base model -> runs -> checkpoints -> exports (UUID, RUN or all)")
    s.add_argument("target", nargs="?")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_lineage)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (gguf.GgufError, DigestMismatch, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # grpc errors from the direct stub calls
        import grpc

        if isinstance(e, grpc.RpcError):
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
