"""Entry point of the signal benchmark (the code: bench/signal_bench.py, see its docstring).

    nice python bench/signal.py [--seeds 5] [--random 10] [--quick] [--out PATH] [--json PATH]

Why this file is only a shim: it shares its name with the standard library's `signal`. Every bench
script runs with bench/ first on sys.path, so when one of them (or subprocess, asyncio, torch
inside it) imports `signal`, Python finds this file. Imported under that name, it loads the real
module in its own place and hands over; run as a script, it moves bench/ to the end of sys.path
before anything imports `signal`, then runs the benchmark.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "signal":
    import importlib.machinery
    import importlib.util

    _spec = importlib.machinery.PathFinder.find_spec(
        "signal", [p for p in sys.path if os.path.abspath(p or ".") != _HERE])
    if _spec is None or _spec.loader is None:
        raise ImportError("the standard library's signal module was not found")
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["signal"] = _real  # what `import signal` returns once this file has run
    _spec.loader.exec_module(_real)
    globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})
elif __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]
    from signal_bench import main

    raise SystemExit(main())
