"""``fastconv info``: how fastconv was built (kernels, OpenMP, threads, BLAS)."""

__all__ = ["add_parsers", "cmd_info"]


def _print(*lines):
    for line in lines:
        print(line, flush=True)


def cmd_info(args):
    import fastconv

    info = fastconv.build_info()
    _print(f"fastconv {fastconv.__version__}")
    for key, value in info.items():
        if key == "blas":
            for lib in value:
                _print(f"blas: {lib.get('internal_api')} {lib.get('version')} "
                       f"({lib.get('num_threads')} threads, {lib.get('architecture')}) {lib.get('filepath')}")
            if not value:
                _print("blas: none found")
        else:
            _print(f"{key}: {', '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
    return 0


def add_parsers(commands):
    """Add ``info`` to fastconv's argparse sub-commands."""
    info = commands.add_parser("info", help="how fastconv was built: kernels, OpenMP, threads, BLAS",
                               description="Print fastconv.build_info().")
    info.set_defaults(handler=cmd_info)
    return info
