"""``fastconv cache info|clear``: where decoded folder data sets and extracted
archives are kept, and freeing that space (everything there is rebuilt on demand)."""
from fastconv.cli.train import print_lines

__all__ = ["add_parsers", "cmd_cache"]


def _size(count):
    if count < 1024:
        return f"{count:,} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            return f"{count:,.1f} {unit}"


def cmd_cache(args):
    from fastconv.data import cache_info, clear_cache

    rows = cache_info()
    if args.action == "info":
        print_lines(*(f"{row['what']}: {row['path']} ({row['files']:,} files, {_size(row['bytes'])})" for row in rows),
                    "downloaded data sets beside them are not part of the cache; "
                    "'fastconv cache clear' frees the space above")
        return 0
    freed = clear_cache()
    print_lines(f"freed {_size(freed)}: " + ", ".join(str(row["path"]) for row in rows)
                + " (rebuilt when a folder data set is next loaded)")
    return 0


def add_parsers(commands):
    """Add ``cache`` to fastconv's argparse sub-commands."""
    cache = commands.add_parser(
        "cache", help="where decoded image folders and extracted archives are cached; free that space",
        description="Folder data sets (folder:PATH) are decoded once into arrays, and .tar.gz archives "
                    "extracted once, into the per-user data folder ($FASTCONV_DATA, else "
                    "$XDG_CACHE_HOME/fastconv or ~/.cache/fastconv). 'info' shows where and how much; "
                    "'clear' deletes them (downloaded data sets stay).",
    )
    cache.add_argument("action", choices=("info", "clear"), help="info: where and how much; clear: delete it")
    cache.set_defaults(handler=cmd_cache)
    return cache
