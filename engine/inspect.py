"""``python -m engine.inspect PATH [--arch NAME] [--arch-kwargs JSON]``.

Prints :func:`engine.importers.inspect_model` as JSON and exits 0; on bad input prints
``{"error": "..."}`` and exits 2; out of memory (the API runs it under ``RLIMIT_AS``) prints
``{"error": ..., "limit": "memory"}`` and exits 3. The API runs this in a subprocess with
limits (see :func:`api.validation.inspect_model`), so a hostile upload never touches the
web process.

``python -m engine.inspect --to-safetensors OUT PATH`` instead loads the ``.pt`` state dict
at ``PATH`` (``torch.load(weights_only=True)``, a flat dict of tensors) and writes it to
``OUT`` as safetensors, printing ``{"ok": true, "pid": ...}``; the engine runs it under
limits (:func:`engine.importers.load_pt_state_dict`) so no process but this child ever
unpickles an uploaded file. Exit codes as above.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.inspect")
    parser.add_argument("path")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--arch-kwargs", default=None, help="JSON object")
    parser.add_argument("--to-safetensors", default=None, metavar="OUT")
    args = parser.parse_args(argv)
    try:
        import engine.importers as importers

        importers.IN_SANDBOX = True  # this process is the limited child: load .pt files here
        if args.to_safetensors:
            importers.pt_to_safetensors(args.path, args.to_safetensors)
            print(json.dumps({"ok": True, "pid": os.getpid()}))
            return 0
        kwargs = json.loads(args.arch_kwargs) if args.arch_kwargs else None
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError("--arch-kwargs must be a JSON object")
        info = importers.inspect_model(args.path, arch=args.arch, arch_kwargs=kwargs)
    except MemoryError:
        print(json.dumps({"error": "out of memory while loading", "limit": "memory"}))
        return 3
    except (ValueError, OSError) as exc:  # UserInputError is a ValueError
        print(json.dumps({"error": str(exc)}))
        return 2
    except RuntimeError as exc:  # torch's allocator reports a failed allocation this way
        if "allocate" not in str(exc):
            raise
        print(json.dumps({"error": "out of memory while loading", "limit": "memory"}))
        return 3
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
