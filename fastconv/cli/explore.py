"""``fastconv explore RUN_DIR [--port 8000] [--host 127.0.0.1]``: the live explorer.

Starts a local web server (:mod:`fastconv.analysis.explore`) showing the
run's network at work on the data set's images, uploaded files and the
webcam, and prints its address; Ctrl-C stops it. It listens on the loopback
address unless ``--host`` says otherwise, and then warns: the page has no
login, and anyone who reaches it can use the model and see the data set.
"""
from __future__ import annotations

import ipaddress
import socket

from fastconv.cli.argtypes import MAX_IMAGE_SIDE, UsageError, non_negative_int, positive_int

__all__ = ["add_parsers", "run", "is_loopback"]

MAX_PORT = 65535


def _port(text):
    value = non_negative_int(text)
    if value > MAX_PORT:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a port from 0 to {MAX_PORT}, got {text!r}")
    return value


def add_parsers(commands):
    """Add the ``explore`` command to an argparse ``subparsers`` object."""
    p = commands.add_parser(
        "explore", help="a live page in the browser: click a unit, see what it sees",
        description="Serve a page that shows a trained network at work: pick an image of the data set, upload "
                    "one or turn on the webcam, and see the prediction and every layer's activations; click a "
                    "unit for its top images, deconvnet and guided-backprop projections and feature "
                    "visualization; see occlusion, saliency, Grad-CAM and integrated gradients for any class, "
                    "and adversarial examples. The top images of every unit are computed once per model in the "
                    "background and kept in RUN_DIR/explore-cache. Needs the explore extra "
                    "(pip install 'fastconv[explore]').",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'fastconv train' (or a model .npz file)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default: 8000; 0: any free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the "
                        "network, without any login)")
    p.add_argument("--dataset", metavar="NAME",
                   help="data set of the images (default: the one in the model's metadata)")
    p.add_argument("--top-limit", type=positive_int, default=5000, metavar="N",
                   help="search the first N training images for each unit's top images (default: 5000)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="threads for the kernels and BLAS (default: 1, the fastest for requests of one image "
                        "each on a busy machine, and it leaves the other cores to the background work)")
    p.set_defaults(handler=run)
    return p


def is_loopback(host):
    """Whether ``host`` (a name or an address) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host, port):
    """A socket listening on host:port, or UsageError saying why not."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"--host {host}: cannot resolve it ({error.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise UsageError(f"cannot listen on {host} port {port}: {error.strerror or error} "
                         "(another program may use it: try --port 0 for a free one)") from None
    return sock


def _url(host, port):
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def run(args):
    """Serve the explorer until Ctrl-C; returns the exit status."""
    try:
        import uvicorn

        from fastconv.analysis.explore.explorer import Explorer
        from fastconv.analysis.explore.server import LOOPBACK_NAMES, create_app
    except ImportError as error:
        raise UsageError(f"fastconv explore needs the explore extra ({error.name} is missing): "
                         "pip install 'fastconv[explore]'") from None
    import fastconv

    # A request works on one image: the threads of one pass would mostly wait
    # for each other, and for a core, whenever other processes hold the cores.
    fastconv.set_num_threads(args.threads)
    explorer = Explorer(args.run_dir, args.dataset, max_side=MAX_IMAGE_SIDE, top_limit=args.top_limit)
    if explorer.dataset_error:
        print(f"fastconv explore: warning: the run's data set is not available ({explorer.dataset_error}); "
              "uploads and the webcam still work", flush=True)
    loopback = is_loopback(args.host)
    allowed = LOOPBACK_NAMES if loopback else None
    sock = _listen(args.host, args.port)
    port = sock.getsockname()[1]
    if not loopback:
        print(f"fastconv explore: warning: listening on {args.host}, reachable from other machines; the page "
              "has no login, so anyone who reaches it can use the model and see the data set", flush=True)
    print(f"fastconv explore: {explorer.run.name} at {_url(args.host, port)} (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(explorer, allowed_hosts=allowed), log_level="warning",
                                           access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        explorer.close()
        sock.close()
    return 0
