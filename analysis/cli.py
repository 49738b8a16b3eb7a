"""``fastconv viz TOOL RUN_DIR ... --out FILE.png``: one figure per call.

RUN_DIR is a training run folder holding ``model.npz`` (or the path of a
model file itself). The images come from the data set named by
``--dataset``, by default the one recorded in the model's metadata, and are
normalized as the model was trained (``model.meta``).
"""
import argparse
import os

from . import _common as C

TOOLS = {}


def _tool(name, help_text):
    def register(fn):
        TOOLS[name] = (fn, help_text)
        return fn
    return register


class _Context:
    """The model, its normalization and the requested data, loaded lazily."""

    def __init__(self, args):
        import fastconv

        self.args = args
        path = args.run_dir
        if os.path.isdir(path):
            path = os.path.join(path, "model.npz")
        if not os.path.exists(path):
            raise SystemExit(f"error: no model file at {path} (expected RUN_DIR/model.npz)")
        self.model = fastconv.load(path)
        self.normalize = C.Normalizer.from_model(self.model)
        self._dataset = None

    @property
    def dataset(self):
        if self._dataset is None:
            from fastconv.data import load_dataset

            name = self.args.dataset or self.model.meta.get("dataset")
            if not name:
                raise SystemExit(
                    "error: the model's metadata names no data set; pass --dataset NAME "
                    "(mnist-sample, mnist, fashion-mnist, cifar10 or folder:PATH)"
                )
            self._dataset = load_dataset(name)
        return self._dataset

    def images(self):
        ds = self.dataset
        return (ds.x_test, ds.y_test) if self.args.split == "test" else (ds.x_train, ds.y_train)

    def classes(self):
        meta_classes = C.meta_classes(self.model)
        if meta_classes is not None:
            return meta_classes
        return list(self.dataset.classes) if self.args.dataset or self.model.meta.get("dataset") else None

    def selected(self):
        """Raw images, model inputs and labels of the ``--index`` images."""
        raw, labels = self.images()
        index = list(self.args.index)
        for i in index:
            if not 0 <= i < len(raw):
                raise SystemExit(f"error: --index {i} is out of range for the {self.args.split} split of {len(raw)} images")
        chosen = raw[index]
        return chosen, self.normalize(chosen), labels[index]

    def fill_value(self, channels):
        return self.normalize.pixel_value(self.args.fill, channels)


def _add_common(parser, data=True, index=True, many=False):
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run folder holding model.npz (or a model .npz file)")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="where to write the figure (PNG)")
    if data:
        parser.add_argument("--dataset", default=None, metavar="NAME",
                            help="data set to draw images from (default: the one in the model's metadata)")
        parser.add_argument("--split", choices=("test", "train"), default="test", help="which split (default: test)")
    if index:
        parser.add_argument("--index", type=int, nargs="+" if many else 1, default=[0], metavar="I",
                            help="index of the image%s in the split (default: 0)" % ("s" if many else ""))


def _default_code_layer(model):
    """The input of the last Linear layer: the codes the classifier reads."""
    from fastconv import layers as L

    names = C.layer_names(model)
    linear = [i for i, (_, layer) in enumerate(model.named_layers()) if isinstance(layer, L.Linear)]
    if linear and linear[-1] > 0:
        return names[linear[-1] - 1]
    return names[-2] if len(names) > 1 else names[-1]


@_tool("filters", "first-layer filters as image tiles, deeper layers per input channel")
def _filters(ctx, args):
    from .figures import plot_filters

    return plot_filters(ctx.model, args.layer, channels=args.channels, max_filters=args.max_filters, path=args.out)


@_tool("activations", "every feature map of a layer for one image, before and after its ReLU")
def _activations(ctx, args):
    from .feature_maps import activations
    from .figures import plot_activations

    raw, x, _ = ctx.selected()
    layer = args.layer or C.conv_layer_names(ctx.model)[0]
    acts = activations(ctx.model, x[0], layer)
    return plot_activations(acts, raw[0], classes=ctx.classes(), max_maps=args.max_maps, path=args.out)


@_tool("top-images", "the top-k images out of N for one channel or neuron, with receptive-field crops")
def _top_images(ctx, args):
    from .figures import plot_top_images
    from .units import top_images

    raw, labels = ctx.images()
    layer = args.layer or C.last_conv_name(ctx.model)
    unit = args.unit[0] if len(args.unit) == 1 else tuple(args.unit)
    top = top_images(ctx.model, raw, layer, unit, k=args.k, transform=ctx.normalize, limit=args.limit)
    return plot_top_images(top, raw, labels=labels, classes=ctx.classes(), path=args.out)


@_tool("clusters", "k-means clusters of a layer's codes as image montages")
def _clusters(ctx, args):
    from .embedding import cluster, layer_features
    from .figures import plot_clusters

    raw, labels = ctx.images()
    layer = args.layer or _default_code_layer(ctx.model)
    codes = layer_features(ctx.model, raw, layer, transform=ctx.normalize, limit=args.limit)
    groups = cluster(codes, n_clusters=args.clusters, seed=args.seed)
    which = None if args.show is None else range(min(args.show, args.clusters))
    return plot_clusters(groups, raw, which=which, per_cluster=args.per_cluster, labels=labels,
                         classes=ctx.classes(), path=args.out)


@_tool("embedding", "t-SNE or PCA map of a layer's codes, as a class-coloured scatter or a thumbnail grid")
def _embedding(ctx, args):
    from .embedding import embed, layer_features, snap_to_grid
    from .figures import plot_embedding, plot_embedding_grid

    raw, labels = ctx.images()
    layer = args.layer or _default_code_layer(ctx.model)
    codes = layer_features(ctx.model, raw, layer, transform=ctx.normalize, limit=args.limit)
    points = embed(codes, method=args.method, seed=args.seed)
    name = "t-SNE" if args.method == "tsne" else "PCA"
    if args.grid:
        rows, cols = args.grid
        grid = snap_to_grid(points, rows, cols)
        return plot_embedding_grid(grid, raw, title=f"{name} of {layer} codes, snapped to a {rows}x{cols} grid",
                                   path=args.out)
    return plot_embedding(points, labels[:len(points)], classes=ctx.classes(),
                          title=f"{name} of {layer} codes ({len(points)} images)", path=args.out)


@_tool("occlusion", "true-class probability and most probable class as a patch slides over the image")
def _occlusion(ctx, args):
    from .figures import plot_occlusion
    from .occlusion import occlusion_maps

    raw, x, labels = ctx.selected()
    maps = occlusion_maps(ctx.model, x, labels.tolist(), patch=args.patch, stride=args.stride,
                          fill=ctx.fill_value(x.shape[1]))
    return plot_occlusion(maps, raw, classes=ctx.classes(), path=args.out)


@_tool("attribution", "saliency, deconvnet, guided backprop, Grad-CAM, SmoothGrad, integrated gradients")
def _attribution(ctx, args):
    from . import attribution as A
    from .figures import plot_attributions

    raw, x, labels = ctx.selected()
    targets = labels.tolist() if args.target is None else [args.target] * len(x)
    results = {}
    for method in args.methods:
        if method in ("gradcam", "guided-gradcam"):
            layer = args.layer or A.default_gradcam_layer(ctx.model)
            results[f"{method} ({layer})"] = A.METHODS[method](ctx.model, layer).attribute(x, targets)
        elif method == "integrated-gradients":
            results[method] = A.IntegratedGradients(ctx.model).attribute(x, targets, steps=args.steps)
        elif method == "smoothgrad":
            results[method] = A.SmoothGrad(ctx.model).attribute(x, targets, samples=args.samples)
        else:
            results[method] = A.METHODS[method](ctx.model).attribute(x, targets)
    signed = {"gradient", "integrated-gradients"}
    return plot_attributions(raw, results, targets=targets, classes=ctx.classes(), signed=signed, path=args.out)


@_tool("segment", "GrabCut segmentation seeded by the saliency map (needs opencv)")
def _segment(ctx, args):
    from .attribution import Saliency, channel_max
    from .figures import plot_segmentation
    from .segment import grabcut_from_saliency

    raw, x, labels = ctx.selected()
    saliency = channel_max(Saliency(ctx.model).attribute(x, labels.tolist()))[0]
    mask = grabcut_from_saliency(raw[0], saliency, foreground=args.foreground, background=args.background)
    classes = ctx.classes()
    name = classes[labels[0]] if classes is not None else str(labels[0])
    return plot_segmentation(raw[0], saliency, mask, title=f"image {args.index[0]}: {name}", path=args.out)


@_tool("erf", "effective receptive field of a central unit at each layer, with the theoretical one")
def _erf(ctx, args):
    from .figures import plot_receptive_fields
    from .receptive_field import effective_receptive_field

    raw, _ = ctx.images()
    x = ctx.normalize(raw[:args.limit])
    fields = effective_receptive_field(ctx.model, x, layers=args.layers)
    return plot_receptive_fields(fields, path=args.out)


def _grid_size(text):
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like ROWSxCOLS, e.g. 20x20, got {text!r}") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"grid must be positive, got {text!r}")
    return rows, cols


def add_viz_parser(subparsers):
    """Add ``viz`` with one sub-command per tool to an argparse ``subparsers`` object."""
    from .attribution import METHODS

    viz = subparsers.add_parser(
        "viz", help="draw what a trained network does (filters, activations, attributions, ...)",
        description="Figures that look inside a trained network. Each tool writes one PNG with --out.",
    )
    tools = viz.add_subparsers(dest="viz_tool", metavar="TOOL", required=True)

    p = tools.add_parser("filters", help=TOOLS["filters"][1], description=TOOLS["filters"][1])
    _add_common(p, data=False, index=False)
    p.add_argument("--layer", help="Conv2d layer (default: the first)")
    p.add_argument("--channels", type=int, nargs="+", help="input channels to show for a deeper layer (default: 0-3)")
    p.add_argument("--max-filters", type=int, default=64, help="show at most this many filters (default: 64)")

    p = tools.add_parser("activations", help=TOOLS["activations"][1], description=TOOLS["activations"][1])
    _add_common(p)
    p.add_argument("--layer", help="layer whose maps to show (default: the first Conv2d)")
    p.add_argument("--max-maps", type=int, default=64, help="show at most this many maps (default: 64)")

    p = tools.add_parser("top-images", help=TOOLS["top-images"][1], description=TOOLS["top-images"][1])
    _add_common(p, index=False)
    p.add_argument("--layer", help="layer of the unit (default: the last Conv2d)")
    p.add_argument("--unit", type=int, nargs="+", default=[0], metavar="U",
                   help="channel (its maximum over the map), neuron, or C I J for one position (default: 0)")
    p.add_argument("--k", type=int, default=20, help="how many images (default: 20)")
    p.add_argument("--limit", type=int, default=2000, help="search the first N images (default: 2000)")

    p = tools.add_parser("clusters", help=TOOLS["clusters"][1], description=TOOLS["clusters"][1])
    _add_common(p, index=False)
    p.add_argument("--layer", help="layer whose codes to cluster (default: the input of the last Linear)")
    p.add_argument("--clusters", type=int, default=10, help="number of k-means clusters (default: 10)")
    p.add_argument("--show", type=int, help="draw only the first N clusters")
    p.add_argument("--per-cluster", type=int, default=12, help="images per cluster (default: 12)")
    p.add_argument("--limit", type=int, default=2000, help="use the first N images (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")

    p = tools.add_parser("embedding", help=TOOLS["embedding"][1], description=TOOLS["embedding"][1])
    _add_common(p, index=False)
    p.add_argument("--layer", help="layer whose codes to map (default: the input of the last Linear)")
    p.add_argument("--method", choices=("tsne", "pca"), default="tsne", help="t-SNE or the faster PCA (default: tsne)")
    p.add_argument("--grid", type=_grid_size, metavar="ROWSxCOLS",
                   help="draw thumbnails snapped to a lattice of this size instead of a scatter")
    p.add_argument("--limit", type=int, default=1000, help="use the first N images (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    p = tools.add_parser("occlusion", help=TOOLS["occlusion"][1], description=TOOLS["occlusion"][1])
    _add_common(p, many=True)
    p.add_argument("--patch", type=int, default=14, help="patch size in pixels (default: 14)")
    p.add_argument("--stride", type=int, default=2, help="patch stride in pixels (default: 2)")
    p.add_argument("--fill", type=float, default=0.0, help="raw pixel value 0-255 under the patch (default: 0)")

    p = tools.add_parser("attribution", help=TOOLS["attribution"][1], description=TOOLS["attribution"][1])
    _add_common(p, many=True)
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), metavar="METHOD",
                   default=["saliency", "deconvnet", "guided-backprop", "gradcam", "guided-gradcam"],
                   help=f"any of {', '.join(sorted(METHODS))} (default: saliency deconvnet guided-backprop gradcam guided-gradcam)")
    p.add_argument("--target", type=int, help="class to explain (default: each image's label)")
    p.add_argument("--layer", help="layer for Grad-CAM (default: the ReLU after the last Conv2d)")
    p.add_argument("--steps", type=int, default=50, help="integrated-gradients steps (default: 50)")
    p.add_argument("--samples", type=int, default=25, help="SmoothGrad noisy samples (default: 25)")

    p = tools.add_parser("segment", help=TOOLS["segment"][1], description=TOOLS["segment"][1])
    _add_common(p)
    p.add_argument("--foreground", type=float, default=0.95, help="saliency quantile seeding the object (default: 0.95)")
    p.add_argument("--background", type=float, default=0.30, help="saliency quantile seeding the background (default: 0.30)")

    p = tools.add_parser("erf", help=TOOLS["erf"][1], description=TOOLS["erf"][1])
    _add_common(p, index=False)
    p.add_argument("--layers", nargs="+", help="layers to measure (default: every convolution and pooling layer)")
    p.add_argument("--limit", type=int, default=256, help="average over the first N images (default: 256)")

    for name, (fn, _) in TOOLS.items():
        # ``handler`` as well as ``func``: fastconv's own commands dispatch on ``handler``.
        tools.choices[name].set_defaults(func=run, handler=run, viz_function=fn)
    return viz


def run(args):
    """Run the viz tool chosen on the command line; returns the exit status."""
    from fastconv.data import DataError

    ctx = _Context(args)
    try:
        args.viz_function(ctx, args)
    except (ValueError, ImportError, DataError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {args.out}")
    return 0
