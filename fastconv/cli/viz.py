"""``fastconv viz TOOL RUN_DIR ... --out FILE.png``: one figure per call.

RUN_DIR is a training run folder holding ``model.npz`` (or the path of a
model file itself), opened as a :class:`fastconv.train.RunDir`. The images
come from the data set named by ``--dataset``, by default the one recorded
in the model's metadata (else in the run's configuration), and are
normalized as the model was trained (``model.meta``).
"""
from __future__ import annotations

import argparse
import os

from fastconv.analysis import _common as C
from fastconv.cli import argtypes
from fastconv.train.rundir import FINAL_MODEL, RunDir

TOOLS: dict[str, object] = {}


def _tool(name, help_text):
    def register(fn):
        TOOLS[name] = (fn, help_text)
        return fn
    return register


def _usage_error(message):
    """The error fastconv's command line prints as 'fastconv viz: error: ...'
    with exit status 2, as it does for every other command's mistakes."""
    from fastconv.cli.argtypes import UsageError

    return UsageError(message)


class _Context:
    """The run, its model and normalization, and the requested data, loaded lazily."""

    def __init__(self, args):
        self.args = args
        self.run = RunDir.open(args.run_dir)
        self.model = self.run.model
        self.normalize = C.Normalizer.from_model(self.model)
        self._dataset = None

    @property
    def dataset(self):
        if self._dataset is None:
            # --index counts in the whole split, not in the run's --limit subset.
            self._dataset = self.run.load_dataset(self.args.dataset, subset=False)
        return self._dataset

    def images(self):
        ds = self.dataset
        return (ds.x_test, ds.y_test) if self.args.split == "test" else (ds.x_train, ds.y_train)

    def classes(self):
        meta_classes = C.meta_classes(self.model)
        if meta_classes is not None:
            return meta_classes
        return list(self.dataset.classes) if self.run.dataset_name(self.args.dataset) else None

    def selected(self):
        """Raw images, model inputs and labels of the ``--index`` images."""
        raw, labels = self.images()
        index = list(self.args.index)
        for i in index:
            if not 0 <= i < len(raw):
                raise _usage_error(
                    f"--index {i} is out of range for the {self.args.split} split of {len(raw)} images")
        chosen = raw[index]
        return chosen, self.normalize(chosen), labels[index]

    def fill_value(self, channels):
        return self.normalize.pixel_value(self.args.fill, channels)


def _add_common(parser, data=True, index=True, many=False):
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help=f"training run folder holding {FINAL_MODEL} (or a model .npz file)")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="where to write the figure (PNG)")
    if data:
        parser.add_argument("--dataset", default=None, metavar="NAME",
                            help="data set to draw images from (default: the one in the model's metadata)")
        parser.add_argument("--split", choices=("test", "train"), default="test", help="which split (default: test)")
    if index:
        parser.add_argument("--index", type=int, nargs="+" if many else 1, default=[0], metavar="I",
                            help="index of the image%s in the split (default: 0)" % ("s" if many else ""))


@_tool("filters", "first-layer filters as image tiles, deeper layers per input channel")
def _filters(ctx, args):
    from fastconv.analysis.visualize.figures import plot_filters

    return plot_filters(ctx.model, args.layer, channels=args.channels, max_filters=args.max_filters, path=args.out)


@_tool("activations", "every feature map of a layer for one image, before and after its ReLU")
def _activations(ctx, args):
    from fastconv.analysis.visualize.feature_maps import activations
    from fastconv.analysis.visualize.figures import plot_activations

    raw, x, _ = ctx.selected()
    layer = args.layer or C.conv_layer_names(ctx.model)[0]
    acts = activations(ctx.model, x[0], layer)
    return plot_activations(acts, raw[0], classes=ctx.classes(), max_maps=args.max_maps, path=args.out)


@_tool("top-images", "the top-k images out of N for one channel or neuron, with receptive-field crops")
def _top_images(ctx, args):
    from fastconv.analysis.visualize.figures import plot_top_images
    from fastconv.cli import sharded

    if len(args.unit) not in (1, 3):
        raise _usage_error(f"--unit takes one channel or neuron, or C I J for one position; "
                           f"got {' '.join(map(str, args.unit))}")
    raw, labels = ctx.images()
    layer = args.layer or C.last_conv_name(ctx.model)
    unit = args.unit[0] if len(args.unit) == 1 else tuple(args.unit)
    top = sharded.top_images(_ranks(), ctx.model, raw, layer, unit, args.k, transform=ctx.normalize,
                             limit=args.limit)
    if top is None:  # a rank other than 0, which draws
        return None
    return plot_top_images(top, raw, labels=labels, classes=ctx.classes(), path=args.out)


def _ranks():
    """The MPI ranks the command runs on (one process without a launcher),
    with each rank's share of the cores as its kernel threads."""
    from fastconv.cli.train import set_threads
    from fastconv.train.distributed import world

    comm = world()
    if comm.size > 1:
        set_threads(None)
    return comm


@_tool("clusters", "k-means clusters of a layer's codes as image montages")
def _clusters(ctx, args):
    from fastconv.analysis.visualize.embedding import cluster, default_code_layer, layer_features
    from fastconv.analysis.visualize.figures import plot_clusters

    raw, labels = ctx.images()
    layer = args.layer or default_code_layer(ctx.model)
    codes = layer_features(ctx.model, raw, layer, transform=ctx.normalize, limit=args.limit)
    groups = cluster(codes, n_clusters=args.clusters, seed=args.seed)
    which = None if args.show is None else range(min(args.show, args.clusters))
    return plot_clusters(groups, raw, which=which, per_cluster=args.per_cluster, labels=labels,
                         classes=ctx.classes(), path=args.out)


@_tool("embedding", "t-SNE or PCA map of a layer's codes, as a class-coloured scatter or a thumbnail grid")
def _embedding(ctx, args):
    from fastconv.analysis.visualize.embedding import default_code_layer, embed, layer_features, snap_to_grid
    from fastconv.analysis.visualize.figures import plot_embedding, plot_embedding_grid

    raw, labels = ctx.images()
    layer = args.layer or default_code_layer(ctx.model)
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
    from fastconv.analysis.visualize.figures import plot_occlusion
    from fastconv.cli import sharded

    raw, x, labels = _chosen(ctx, args)
    targets = None if labels is None else labels.tolist()
    maps = sharded.occlusion_maps(_ranks(), ctx.model, x, targets, patch=args.patch, stride=args.stride,
                                  fill=ctx.fill_value(x.shape[1]))
    if maps is None:  # a rank other than 0, which draws
        return None
    return plot_occlusion(maps, raw, classes=_classes(ctx, args), path=args.out)


def _attribute(ctx, args, method, x, targets):
    """The (label, map) of one --methods entry."""
    from fastconv.analysis.attribution import methods as A
    from fastconv.analysis.attribution.lrp import LRP, AlphaBeta, Epsilon

    if method in ("gradcam", "guided-gradcam"):
        layer = args.layer or A.default_gradcam_layer(ctx.model)
        return f"{method} ({layer})", A.METHODS[method](ctx.model, layer).attribute(x, targets)
    if method == "integrated-gradients":
        return method, A.IntegratedGradients(ctx.model).attribute(x, targets, steps=args.steps)
    if method in ("smoothgrad", "gradient-shap"):
        return method, A.METHODS[method](ctx.model).attribute(x, targets, samples=args.samples)
    if method == "lrp-epsilon":
        return method, LRP(ctx.model, Epsilon(0.25)).attribute(x, targets)
    if method == "lrp-alpha-beta":
        return method, LRP(ctx.model, AlphaBeta(1, 0)).attribute(x, targets)
    return method, A.METHODS[method](ctx.model).attribute(x, targets)


SIGNED = {"gradient", "integrated-gradients", "input-x-gradient", "deeplift", "gradient-shap", "lrp-epsilon",
          "lrp-alpha-beta"}
EXTRA_METHODS = ("lrp-epsilon", "lrp-alpha-beta")
# The methods that can start from one unit of a layer instead of a class score.
UNIT_METHODS = ("gradient", "saliency", "deconvnet", "guided-backprop", "smoothgrad", "integrated-gradients")


@_tool("attribution", "saliency, deconvnet, guided backprop, Grad-CAM, SmoothGrad, integrated gradients, "
                      "input x gradient, DeepLIFT, gradient SHAP, LRP")
def _attribution(ctx, args):
    from fastconv.analysis.visualize.figures import plot_attributions

    raw, x, labels = _chosen(ctx, args)
    if args.unit is not None:
        return _unit_attribution(ctx, args, raw, x)
    targets = _targets(ctx, args, x, labels)
    results = dict(_attribute(ctx, args, method, x, targets) for method in args.methods)
    signed = {label for label in results if label in SIGNED}
    return plot_attributions(raw, results, targets=targets, classes=_classes(ctx, args), signed=signed,
                             path=args.out)


@_tool("sanity", "cascading layer randomization (rank correlation of maps) and deletion/insertion AUC per method")
def _sanity(ctx, args):
    from fastconv.analysis.attribution.figures import plot_sanity
    from fastconv.analysis.attribution.sanity import sanity_checks

    raw, labels = ctx.images()
    if not 0 < args.count <= len(raw):
        raise _usage_error(f"--count {args.count} is out of range for the {args.split} split of {len(raw)} images")
    x, targets = ctx.normalize(raw[:args.count]), labels[:args.count].tolist()
    factories = {method: (lambda m, method=method: _Bound(ctx, args, method, m)) for method in args.methods}
    results = sanity_checks(ctx.model, x, targets, factories, seed=0)
    rows = ["| method | rank correlation, top layer random | all layers random | deletion AUC | insertion AUC |",
            "|---|---|---|---|---|"]
    for method, top, every, deletion, insertion in results.rows():
        sanity = "- | -" if top is None else f"{top:.2f} | {every:.2f}"
        rows.append(f"| {method} | {sanity} | {deletion:.3f} | {insertion:.3f} |")
    print("\n".join(rows))
    return plot_sanity(results.checks, results.deletion, results.insertion, path=args.out)


class _Bound:
    """One --methods entry on another model (the randomized copy), with the ``attribute`` verb."""

    def __init__(self, ctx, args, method, model):
        self.model = model
        self.ctx = argparse.Namespace(model=model)
        self.args, self.method = args, method

    def attribute(self, x, targets):
        return _attribute(self.ctx, self.args, self.method, x, targets)[1]


@_tool("segment", "GrabCut segmentation seeded by the saliency map (needs opencv)")
def _segment(ctx, args):
    from fastconv.analysis.attribution.methods import Saliency, channel_max
    from fastconv.analysis.attribution.segment import grabcut_from_saliency
    from fastconv.analysis.visualize.figures import plot_segmentation

    raw, x, labels = _chosen(ctx, args)
    target = _targets(ctx, args, x, labels)[0]
    saliency = channel_max(Saliency(ctx.model).attribute(x, [target]))[0]
    mask = grabcut_from_saliency(raw[0], saliency, foreground=args.foreground, background=args.background)
    classes = _classes(ctx, args)
    name = classes[target] if classes is not None else str(target)
    what = os.path.basename(args.image) if args.image is not None else f"image {args.index[0]}"
    return plot_segmentation(raw[0], saliency, mask, title=f"{what}: {name}", path=args.out)


@_tool("erf", "effective receptive field of a central unit at each layer, with the theoretical one")
def _erf(ctx, args):
    from fastconv.analysis.visualize.figures import plot_receptive_fields
    from fastconv.analysis.visualize.receptive_field import effective_receptive_field

    raw, _ = ctx.images()
    x = ctx.normalize(raw[:args.limit])
    fields = effective_receptive_field(ctx.model, x, layers=args.layers)
    return plot_receptive_fields(fields, path=args.out)


# -- images from files, per-unit projections, neighbours, Zeiler & Fergus units, HOG ---------------

def _chosen(ctx, args):
    """Raw images (uint8), model inputs and labels of ``--image FILE`` (labels None:
    a file has none; the image is scaled and cropped to the model's input size)
    or of the ``--index`` images of the data set."""
    if getattr(args, "image", None) is None:
        return ctx.selected()
    import numpy as np

    from fastconv.analysis.optimize.methods import input_shape, load_image

    try:
        size = input_shape(ctx.model)[1:]
    except ValueError:
        size = None  # a model that takes any size: the image as it is
    pixels = load_image(args.image, channels=C.input_channels(ctx.model) or 3, size=size)
    raw = np.round(pixels * 255.0).astype(np.uint8)[None]
    return raw, ctx.normalize(raw), None


def _targets(ctx, args, x, labels):
    """One class per image: ``--target``, else the label, else (a file) the predicted class."""
    target = getattr(args, "target", None)
    if target is not None:
        return [target] * len(x)
    if labels is not None:
        return labels.tolist()
    return ctx.model.predict(x).argmax(axis=1).tolist()


def _classes(ctx, args):
    """Class names; for a file, only those the model records (no data set is opened)."""
    if getattr(args, "image", None) is not None:
        return C.meta_classes(ctx.model)
    return ctx.classes()


def _unit_attribution(ctx, args, raw, x):
    """``viz attribution --unit``: each gradient method projects one unit of ``--layer``
    (a channel at its maximum in each image, or C I J) back to the pixels."""
    from fastconv.analysis.attribution import methods as A
    from fastconv.analysis.visualize.figures import plot_attributions

    if len(args.unit) not in (1, 3):
        raise _usage_error(f"--unit takes one channel or neuron, or C I J for one position; "
                           f"got {' '.join(map(str, args.unit))}")
    unit = args.unit[0] if len(args.unit) == 1 else tuple(args.unit)
    layer = args.layer or C.last_conv_name(ctx.model)
    cams = [m for m in args.methods if m in ("gradcam", "guided-gradcam")]
    if cams:
        raise _usage_error(f"--unit projects a unit with a gradient rule; {' and '.join(cams)} weigh a "
                           f"layer's maps by a class score: leave them out of --methods")
    others = [m for m in args.methods if m not in UNIT_METHODS]
    if others:
        raise _usage_error(f"--unit works with {', '.join(UNIT_METHODS)}; not with {', '.join(others)}")
    results = {}
    for method in args.methods:
        if method == "integrated-gradients":
            result = A.IntegratedGradients(ctx.model, layer).attribute(x, unit, steps=args.steps)
        elif method == "smoothgrad":
            result = A.SmoothGrad(A.Saliency(ctx.model, layer)).attribute(x, unit, samples=args.samples)
        else:
            result = A.METHODS[method](ctx.model, layer).attribute(x, unit)
        results[f"{method}, {layer} unit {unit}"] = result
    signed = {name for name in results if name.startswith(("gradient", "integrated-gradients"))}
    return plot_attributions(raw, results, targets=None, signed=signed, path=args.out)


@_tool("neighbors", "query images and their nearest training images by a layer's codes")
def _neighbors(ctx, args):
    import numpy as np

    from fastconv.analysis.visualize.neighbors import nearest_neighbors, plot_neighbors

    raw, _, labels = _chosen(ctx, args)
    ds = ctx.dataset
    # Spread over the split rather than its first images: a folder's training split is in class order.
    chosen = np.unique(np.linspace(0, len(ds.x_train) - 1, min(args.limit, len(ds.x_train))).astype(np.int64))
    database, database_labels = ds.x_train[chosen], ds.y_train[chosen]
    result = nearest_neighbors(ctx.model, raw, database, layer=args.layer, k=args.k, transform=ctx.normalize)
    if labels is not None:
        print(f"{result.label_agreement(labels, database_labels):.1%} of the neighbours share the query's class")
    return plot_neighbors(result, raw, database, query_labels=labels, database_labels=database_labels,
                          classes=ctx.classes(), path=args.out)


@_tool("unit-projections", "Zeiler & Fergus: top images of units of each layer beside their deconvnet projections")
def _unit_projections(ctx, args):
    from fastconv.analysis.visualize.projections import plot_unit_projections, unit_projections

    raw, _ = ctx.images()
    layers = args.layers or C.conv_layer_names(ctx.model)
    results = []
    for layer in layers:
        results.extend(unit_projections(ctx.model, raw, layer, args.units, k=args.k, method=args.method,
                                        transform=ctx.normalize, limit=args.limit))
    return plot_unit_projections(results, raw, per_row=len(args.units), path=args.out)


@_tool("hog", "HOG of images, the image nearest in HOG, and the network's inversion of their codes")
def _hog(ctx, args):
    from fastconv.analysis.visualize.hog import compare_hog, plot_hog

    raw, _, _ = _chosen(ctx, args)
    database = ctx.dataset.x_train
    result = compare_hog(ctx.model, raw, database, layer=args.layer, cell=args.cell, limit=args.limit,
                         steps=args.steps, seed=args.seed)
    return plot_hog(result, raw, database, path=args.out)


@_tool("linear-templates", "a softmax classifier's templates, or adding one class's template to images")
def _linear_templates(ctx, args):
    from fastconv.analysis.attacks.figures import plot_adversarial, plot_templates
    from fastconv.analysis.attacks.linear import add_template, templates, train_linear

    ds = ctx.dataset
    count = min(len(ds.x_train), args.limit)
    pixels = ds.x_train[:count].astype("float32") / ctx.normalize.scale
    softmax = train_linear(pixels, ds.y_train[:count], num_classes=len(ds.classes), epochs=args.epochs)
    raw, labels = ctx.images()
    accuracy = float((softmax.predict(raw[:args.limit].astype("float32") / ctx.normalize.scale).argmax(axis=1)
                      == labels[:args.limit]).mean())
    print(f"the softmax classifier: {accuracy:.1%} on the first {min(len(raw), args.limit)} {args.split} images")
    classes = list(ds.classes)
    if args.target is None:
        return plot_templates(templates(softmax), classes=classes, path=args.out)
    if not 0 <= args.target < len(classes):
        raise _usage_error(f"--target {args.target} is out of range for {len(classes)} classes")
    _, _, chosen = ctx.selected()
    x = raw[list(args.index)].astype("float32") / ctx.normalize.scale
    adversarial = add_template(softmax, x, args.target, args.eps)
    return plot_adversarial(softmax, x, adversarial, y=chosen, target=[args.target] * len(x), classes=classes,
                            title=f"the template of {classes[args.target]} added at largest change {args.eps}",
                            path=args.out)


def _pixels_of(ctx, args, size):
    """The image to work on in [0, 1], (C, H, W): ``--image`` (a file or a sample
    name) scaled and cropped to ``size``, else the ``--index`` image of the data set."""
    from fastconv.analysis.optimize.methods import load_image

    if args.image is not None:
        channels = C.input_channels(ctx.model) or 3
        return load_image(args.image, channels=channels, size=size)
    raw, _, _ = ctx.selected()
    return raw[0].astype("float64") / ctx.normalize.scale


@_tool("class-model", "images that maximize each class score (Simonyan et al., Yosinski et al.'s regularizers)")
def _class_model(ctx, args):
    from fastconv.analysis.optimize.figures import plot_class_models
    from fastconv.analysis.optimize.methods import class_model, input_shape, logits_layer, output_shape

    shape = input_shape(ctx.model, args.size)
    count = output_shape(ctx.model, logits_layer(ctx.model), (1,) + shape)[1]
    targets = args.classes if args.classes is not None else list(range(count))
    result = class_model(ctx.model, targets, steps=args.steps, seed=args.seed, init=args.init, lr=args.lr,
                         size=args.size, l2_decay=args.l2_decay, blur_every=args.blur_every,
                         blur_sigma=args.blur_sigma, jitter=args.jitter, clip_norm=args.clip_norm,
                         clip_contribution=args.clip_contribution)
    return plot_class_models(result, classes=C.meta_classes(ctx.model, count), path=args.out)


@_tool("feature-vis", "images that maximize channels of each layer (pixel or Fourier parametrization)")
def _feature_vis(ctx, args):
    from fastconv.analysis.optimize.figures import plot_directions, plot_feature_grid
    from fastconv.analysis.optimize.methods import direction_visualization, diverse_visualization, feature_grid
    from fastconv.analysis.optimize.parametrize import color_correlation

    color = None
    if args.decorrelate:
        raw, _ = ctx.images()
        color = color_correlation(raw[:args.limit])
    options = dict(init=args.init, steps=args.steps, seed=args.seed, lr=args.lr, size=args.size,
                   parametrization=args.parametrization, color=color, jitter=args.jitter, scale=args.scale,
                   rotate=args.rotate, l2_decay=args.l2_decay)
    if args.combine or args.direction:
        layer = _one_layer(args, "--combine/--direction")
        directions = [_combination(args.combine)] if args.combine else _direction_file(args.direction)
        result = direction_visualization(ctx.model, layer, directions, cosine_power=args.cosine_power,
                                         position=tuple(args.position) if args.position else None, **options)
        for k, (start, value) in enumerate(zip(result.history["objective"][0], result.values)):
            print(f"direction {k}: objective {start:.3g} at the start, {value:.3g} after")
        return plot_directions(result, path=args.out)
    if args.diversity:
        if args.diversity < 2:
            raise _usage_error(f"--diversity is the number of images per channel and must be at least 2, "
                               f"got {args.diversity}")
        from fastconv.analysis.optimize.methods import feature_visualization, input_shape, output_shape, spread_channels
        from fastconv.analysis.optimize.parametrize import PixelSpace, gram_similarity

        layer = _one_layer(args, "--diversity")
        out = output_shape(ctx.model, layer, (1,) + input_shape(ctx.model, args.size))
        channels = args.channels or spread_channels(out[1], args.per_layer)
        grid = {}
        for c in channels:
            alone = feature_visualization(ctx.model, layer, [c] * args.diversity, **options)
            result = diverse_visualization(ctx.model, layer, c, count=args.diversity,
                                           diversity=args.diversity_weight, **options)
            apart = gram_similarity(ctx.model.forward(PixelSpace(ctx.model).to_input(result.images), until=layer))
            same = gram_similarity(ctx.model.forward(PixelSpace(ctx.model).to_input(alone.images), until=layer))
            print(f"channel {c}: values {' '.join(f'{v:.3g}' for v in result.values)} "
                  f"(without the penalty {' '.join(f'{v:.3g}' for v in alone.values)}); "
                  f"Gram similarity {apart[0]:.3g} (without {same[0]:.3g}, at most {args.diversity - 1})")
            grid[f"{layer} ch {c}"] = result
        return plot_feature_grid(grid, path=args.out, title=f"{args.diversity} diverse images per channel of "
                                                            f"{layer} (Gram-similarity penalty "
                                                            f"{args.diversity_weight:g}; each tile stretched)")
    grid = feature_grid(ctx.model, layers=args.layers, per_layer=args.per_layer, channels=args.channels,
                        center=args.center, **options)
    return plot_feature_grid(grid, path=args.out)


def _one_layer(args, option):
    if not args.layers or len(args.layers) != 1:
        raise _usage_error(f"{option} needs exactly one layer: --layers NAME")
    return args.layers[0]


def _combination(terms):
    """{channel: weight} from 'C:W' words ('3' alone weighs channel 3 by 1)."""
    weights = {}
    for term in terms:
        channel, _, weight = term.partition(":")
        try:
            weights[int(channel)] = float(weight) if weight else 1.0
        except ValueError:
            raise _usage_error(f"--combine takes CHANNEL:WEIGHT words like 3:1 7:-0.5, got {term!r}") from None
    return weights


def _direction_file(path):
    import numpy as np

    try:
        return np.load(path)
    except (OSError, ValueError) as error:
        raise _usage_error(f"--direction {path!r} is not a .npy file of a vector (C,) or vectors (K, C): "
                           f"{error}") from None


@_tool("atlas", "activation atlas: a layer's activations over many images, laid out, each cell rendered")
def _atlas(ctx, args):
    import numpy as np

    from fastconv.analysis.optimize.atlas import activation_atlas, plot_atlas

    raw, labels = ctx.images()
    layer = args.layer or C.last_conv_name(ctx.model)
    atlas = activation_atlas(ctx.model, raw, layer, grid=args.grid, positions=args.positions, limit=args.limit,
                             min_count=args.min_count, method=args.method, cosine_power=args.cosine_power,
                             seed=args.seed, steps=args.steps, lr=args.lr, jitter=args.jitter,
                             parametrization=args.parametrization)
    point_labels = labels[:args.limit] if args.positions == "mean" else np.repeat(labels[:args.limit],
                                                                                  int(args.positions))
    print(f"{len(atlas.cells)} cells of {args.grid}x{args.grid} drawn ({atlas.method}); objective "
          f"{atlas.start_values.mean():.3g} at the start, {atlas.values.mean():.3g} after (mean over cells)")
    return plot_atlas(atlas, labels=point_labels, classes=ctx.classes(), path=args.out)


@_tool("fooling", "evolved fooling images: CPPN patterns or regular gratings the model is sure of")
def _fooling(ctx, args):
    from fastconv.analysis.optimize.cppn import evolve_fooling, plot_fooling

    classes = C.meta_classes(ctx.model)
    result = evolve_fooling(ctx.model, targets=args.targets, generator=args.generator,
                            generations=args.generations, population=args.population, threshold=args.threshold,
                            seed=args.seed)
    for target, confidence in zip(result.targets, result.confidences):
        name = classes[target] if classes else str(target)
        print(f"{name}: {confidence:.2%}")
    print(f"{int(result.reached.sum())} of {len(result.targets)} classes at {result.threshold:.0%} or more, "
          f"{result.evaluations} images classified")
    return plot_fooling(result, classes=classes, path=args.out)


@_tool("to-class", "push an image towards a class until its probability passes a threshold")
def _to_class(ctx, args):
    from fastconv.analysis.optimize.figures import plot_to_class
    from fastconv.analysis.optimize.methods import input_shape, to_class

    image = _pixels_of(ctx, args, input_shape(ctx.model)[1:])
    result = to_class(ctx.model, image, args.target, threshold=args.threshold, max_steps=args.max_steps, lr=args.lr)
    return plot_to_class(result, classes=ctx.classes(), path=args.out)


@_tool("invert", "reconstruct an image from its code at each layer (Mahendran & Vedaldi)")
def _invert(ctx, args):
    from fastconv.analysis.optimize.figures import plot_inversions
    from fastconv.analysis.optimize.methods import input_shape, invert_layers

    image = _pixels_of(ctx, args, input_shape(ctx.model)[1:])
    results = invert_layers(ctx.model, image, layers=args.layers, steps=args.steps, method=args.method,
                            tv_weight=args.tv_weight, tv_beta=args.tv_beta, alpha_weight=args.alpha_weight,
                            seed=args.seed)
    return plot_inversions(results, path=args.out)


@_tool("dream", "DeepDream: amplify what a layer sees in an image of any size, over octaves")
def _dream(ctx, args):
    from fastconv.analysis.optimize.figures import plot_dream
    from fastconv.analysis.optimize.methods import deep_dream, load_image
    from fastconv.analysis.optimize.style import default_content_layer

    image = load_image(args.image, channels=C.input_channels(ctx.model) or 3, size=args.size)
    layers = args.layers or [default_content_layer(ctx.model)]
    results = [deep_dream(ctx.model, image, layer, steps=args.steps, octaves=args.octaves,
                          octave_scale=args.octave_scale, lr=args.lr, jitter=args.jitter,
                          channel=args.channel, seed=args.seed) for layer in layers]
    return plot_dream(results, path=args.out)


@_tool("style", "neural style transfer or, with --texture, texture synthesis (Gatys et al.)")
def _style(ctx, args):
    from fastconv.analysis.optimize.figures import plot_style
    from fastconv.analysis.optimize.methods import load_image
    from fastconv.analysis.optimize.style import random_weights, style_transfer

    model = ctx.model if args.random_weights is None else random_weights(ctx.model, seed=args.random_weights)
    channels = C.input_channels(model) or 3
    size = (args.size, args.size)
    content = None if args.texture else load_image(args.content, channels=channels, size=size)
    style_size = (args.style_size, args.style_size) if args.style_size else size
    style = load_image(args.style, channels=channels, size=style_size)
    result = style_transfer(model, content, style, steps=args.steps, method=args.method, lr=args.lr,
                            size=size if args.texture else None, content_layer=args.content_layer,
                            style_layers=args.style_layers, content_weight=args.content_weight,
                            style_weight=args.style_weight, tv_weight=args.tv_weight,
                            statistics=args.statistics, seed=args.seed)
    weights = f"random weights (seed {args.random_weights})" if args.random_weights is not None else "trained weights"
    print(f"{result.evaluations} evaluations in {result.seconds:.1f} s ({result.method}, {weights})")
    what = "texture synthesis" if content is None else "neural style transfer"
    title = f"{what} with {weights}: style at {', '.join(result.style_layers)}"
    if content is not None:
        title += f", content at {result.content_layer}"
    return plot_style(result, content, style, path=args.out, title=title)


def _positions(text):
    if text == "mean":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"positions must be 'mean' or a positive int, got {text!r}")
    return value


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
    from fastconv.analysis.attribution.methods import METHODS

    viz = subparsers.add_parser(
        "viz", help="draw what a trained network does (filters, activations, attributions, ...)",
        description="Figures that look inside a trained network. Each tool writes one PNG with --out.",
    )
    tools = viz.add_subparsers(dest="viz_tool", metavar="TOOL", required=True)

    p = tools.add_parser("filters", help=TOOLS["filters"][1], description=TOOLS["filters"][1])
    _add_common(p, data=False, index=False)
    p.add_argument("--layer", help="Conv2d layer (default: the first)")
    p.add_argument("--channels", type=int, nargs="+", help="input channels to show for a deeper layer (default: 0-3)")
    p.add_argument("--max-filters", type=argtypes.positive_int, default=64,
                   help="show at most this many filters (default: 64)")

    p = tools.add_parser("activations", help=TOOLS["activations"][1], description=TOOLS["activations"][1])
    _add_common(p)
    p.add_argument("--layer", help="layer whose maps to show (default: the first Conv2d)")
    p.add_argument("--max-maps", type=argtypes.positive_int, default=64,
                   help="show at most this many maps (default: 64)")

    p = tools.add_parser("top-images", help=TOOLS["top-images"][1], description=TOOLS["top-images"][1])
    _add_common(p, index=False)
    p.add_argument("--layer", help="layer of the unit (default: the last Conv2d)")
    p.add_argument("--unit", type=int, nargs="+", default=[0], metavar="U",
                   help="channel (its maximum over the map), neuron, or C I J for one position (default: 0)")
    p.add_argument("--k", type=argtypes.positive_int, default=20, help="how many images (default: 20)")
    p.add_argument("--limit", type=argtypes.positive_int, default=2000,
                   help="search the first N images (default: 2000)")

    p = tools.add_parser("clusters", help=TOOLS["clusters"][1], description=TOOLS["clusters"][1])
    _add_common(p, index=False)
    p.add_argument("--layer", help="layer whose codes to cluster (default: the input of the last Linear)")
    p.add_argument("--clusters", type=argtypes.positive_int, default=10,
                   help="number of k-means clusters (default: 10)")
    p.add_argument("--show", type=argtypes.positive_int, help="draw only the first N clusters")
    p.add_argument("--per-cluster", type=argtypes.positive_int, default=12, help="images per cluster (default: 12)")
    p.add_argument("--limit", type=argtypes.positive_int, default=2000, help="use the first N images (default: 2000)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="k-means seed (default: 0)")

    p = tools.add_parser("embedding", help=TOOLS["embedding"][1], description=TOOLS["embedding"][1])
    _add_common(p, index=False)
    p.add_argument("--layer", help="layer whose codes to map (default: the input of the last Linear)")
    p.add_argument("--method", choices=("tsne", "pca"), default="tsne", help="t-SNE or the faster PCA (default: tsne)")
    p.add_argument("--grid", type=_grid_size, metavar="ROWSxCOLS",
                   help="draw thumbnails snapped to a lattice of this size instead of a scatter")
    p.add_argument("--limit", type=argtypes.positive_int, default=1000, help="use the first N images (default: 1000)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="random seed (default: 0)")

    p = tools.add_parser("occlusion", help=TOOLS["occlusion"][1], description=TOOLS["occlusion"][1])
    _add_common(p, many=True)
    p.add_argument("--patch", type=argtypes.positive_int, default=14, help="patch size in pixels (default: 14)")
    p.add_argument("--stride", type=argtypes.positive_int, default=2, help="patch stride in pixels (default: 2)")
    p.add_argument("--fill", type=argtypes.pixel_value, default=0.0,
                   help="raw pixel value 0-255 under the patch (default: 0)")

    p = tools.add_parser("attribution", help=TOOLS["attribution"][1], description=TOOLS["attribution"][1])
    _add_common(p, many=True)
    methods = sorted(set(METHODS) | set(EXTRA_METHODS))

    def add_methods(p, default, layer_help="layer for Grad-CAM (default: the ReLU after the last Conv2d)"):
        p.add_argument("--methods", nargs="+", choices=methods, metavar="METHOD", default=default,
                       help=f"any of {', '.join(methods)} (default: {' '.join(default)})")
        p.add_argument("--layer", help=layer_help)
        p.add_argument("--steps", type=argtypes.positive_int, default=50,
                       help="integrated-gradients steps (default: 50)")
        p.add_argument("--samples", type=argtypes.positive_int, default=25,
                       help="SmoothGrad and gradient-SHAP samples (default: 25)")

    add_methods(p, ["saliency", "deconvnet", "guided-backprop", "gradcam", "guided-gradcam"],
                layer_help="layer for Grad-CAM (default: the ReLU after the last Conv2d), or of the --unit to explain")
    p.add_argument("--target", type=int, help="class to explain (default: each image's label)")

    p = tools.add_parser("sanity", help=TOOLS["sanity"][1], description=TOOLS["sanity"][1])
    _add_common(p, index=False)
    add_methods(p, ["gradient", "guided-backprop", "gradcam", "integrated-gradients", "deeplift", "lrp-epsilon"])
    p.add_argument("--count", type=argtypes.positive_int, default=16,
                   help="how many images of the split, from the first (default: 16)")

    p = tools.add_parser("segment", help=TOOLS["segment"][1], description=TOOLS["segment"][1])
    _add_common(p)
    p.add_argument("--foreground", type=argtypes.unit_interval, default=0.95,
                   help="saliency quantile seeding the object (default: 0.95)")
    p.add_argument("--background", type=argtypes.unit_interval, default=0.30,
                   help="saliency quantile seeding the background (default: 0.30)")

    p = tools.add_parser("erf", help=TOOLS["erf"][1], description=TOOLS["erf"][1])
    _add_common(p, index=False)
    p.add_argument("--layers", nargs="+", help="layers to measure (default: every convolution and pooling layer)")
    p.add_argument("--limit", type=argtypes.positive_int, default=256,
                   help="average over the first N images (default: 256)")

    image_help = ("an image file instead of --index, scaled and cropped to the model's input size "
                  "(its class: --target, else the predicted one)")
    for name in ("occlusion", "attribution", "segment"):
        tools.choices[name].add_argument("--image", metavar="FILE", help=image_help)
    tools.choices["attribution"].add_argument(
        "--unit", type=int, nargs="+", metavar="U",
        help="explain a unit of --layer (default: the last Conv2d) instead of a class: a channel at its "
             "maximum in each image, a neuron, or C I J; with the methods " + " ".join(UNIT_METHODS))

    p = tools.add_parser("neighbors", help=TOOLS["neighbors"][1], description=TOOLS["neighbors"][1])
    _add_common(p, many=True)
    p.add_argument("--image", metavar="FILE", help="an image file as the query instead of --index")
    p.add_argument("--layer", help="layer whose codes to compare (default: the input of the last Linear)")
    p.add_argument("--k", type=argtypes.positive_int, default=8, help="neighbours per query (default: 8)")
    p.add_argument("--limit", type=argtypes.positive_int, default=10000,
                   help="search N training images spread evenly over the split (default: 10000)")

    p = tools.add_parser("unit-projections", help=TOOLS["unit-projections"][1],
                         description=TOOLS["unit-projections"][1])
    _add_common(p, index=False)
    p.add_argument("--layers", nargs="+", help="layers, one row of units each (default: every Conv2d)")
    p.add_argument("--units", type=int, nargs="+", default=[0, 1, 2, 3], metavar="C",
                   help="channels to show in every layer (default: 0 1 2 3)")
    p.add_argument("--k", type=argtypes.positive_int, default=9, help="top images per unit (default: 9)")
    p.add_argument("--method", choices=("deconvnet", "guided-backprop", "gradient"), default="deconvnet",
                   help="backward rule of the projection (default: deconvnet)")
    p.add_argument("--limit", type=argtypes.positive_int, default=2000,
                   help="search the first N images (default: 2000)")

    p = tools.add_parser("hog", help=TOOLS["hog"][1], description=TOOLS["hog"][1])
    _add_common(p, many=True)
    p.add_argument("--image", metavar="FILE", help="an image file instead of --index")
    p.add_argument("--layer", help="layer whose code to invert (default: the input of the last Linear)")
    p.add_argument("--cell", type=argtypes.positive_int,
                   help="HOG cell side in pixels (default: an eighth of the image side, at least 4)")
    p.add_argument("--limit", type=argtypes.positive_int, default=5000,
                   help="search the first N training images for the nearest HOG (default: 5000)")
    p.add_argument("--steps", type=argtypes.positive_int, default=200,
                   help="evaluations of the inversion's loss (default: 200)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="seed of the inversion (default: 0)")

    p = tools.add_parser("linear-templates", help=TOOLS["linear-templates"][1],
                         description=TOOLS["linear-templates"][1])
    _add_common(p, many=True)
    p.add_argument("--epochs", type=argtypes.positive_int, default=5, help="training epochs (default: 5)")
    p.add_argument("--limit", type=argtypes.positive_int, default=60000,
                   help="train on (and score) the first N images (default: 60000)")
    p.add_argument("--target", type=int, help="add this class's template to the --index images "
                                              "instead of drawing the templates")
    p.add_argument("--eps", type=argtypes.positive_float, default=0.2,
                   help="largest pixel change of the added template, in [0, 1] pixels (default: 0.2)")


    def add_regularizers(p):
        p.add_argument("--steps", type=argtypes.positive_int, default=200, help="gradient steps (default: 200)")
        p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="random seed (default: 0)")
        p.add_argument("--size", type=argtypes.image_side,
                       help="image side in pixels (default: the model's input size)")
        p.add_argument("--l2-decay", type=argtypes.fraction,
                       help="fraction of the image removed per step (default: %(default)s)")
        p.add_argument("--jitter", type=argtypes.non_negative_int, default=0,
                       help="random shift of up to N pixels per step (default: 0)")

    p = tools.add_parser("class-model", help=TOOLS["class-model"][1], description=TOOLS["class-model"][1])
    _add_common(p, data=False, index=False)
    add_regularizers(p)
    p.set_defaults(l2_decay=0.01)
    p.add_argument("--classes", type=int, nargs="+", metavar="K", help="classes to draw (default: all)")
    p.add_argument("--init", choices=("zeros", "noise"), default="zeros", help="start image (default: zeros)")
    p.add_argument("--lr", type=argtypes.positive_float, default=0.05, help="step, in RMS pixel change (default: 0.05)")
    p.add_argument("--blur-every", type=argtypes.non_negative_int, default=4,
                   help="blur every N steps, 0 never (default: 4)")
    p.add_argument("--blur-sigma", type=argtypes.non_negative_float, default=0.5,
                   help="blur width in pixels (default: 0.5)")
    p.add_argument("--clip-norm", type=argtypes.percentile, default=0.0,
                   help="percentile of weakest pixels reset each step")
    p.add_argument("--clip-contribution", type=argtypes.percentile, default=0.0,
                   help="percentile of least-contributing pixels reset each step")

    p = tools.add_parser("feature-vis", help=TOOLS["feature-vis"][1], description=TOOLS["feature-vis"][1])
    _add_common(p, index=False)
    add_regularizers(p)
    p.set_defaults(l2_decay=0.0)
    p.add_argument("--layers", nargs="+", help="layers (default: every Conv2d)")
    p.add_argument("--per-layer", type=argtypes.positive_int, default=8,
                   help="channels per layer, spread evenly (default: 8)")
    p.add_argument("--channels", type=int, nargs="+", help="these channels in every layer instead")
    p.add_argument("--init", choices=("zeros", "noise"), default="noise", help="start image (default: noise)")
    p.add_argument("--center", action="store_true",
                   help="maximize each channel's central unit instead of the channel's mean")
    p.add_argument("--lr", type=argtypes.positive_float, default=0.05, help="Adam step (default: 0.05)")
    p.add_argument("--parametrization", choices=("pixel", "fourier"), default="pixel",
                   help="optimize pixels or a 1/f-scaled spectrum (default: pixel)")
    p.add_argument("--decorrelate", action="store_true",
                   help="Fourier only: correlate colours as in the data set's images")
    p.add_argument("--limit", type=argtypes.positive_int, default=1000,
                   help="images used for --decorrelate (default: 1000)")
    p.add_argument("--scale", type=argtypes.positive_float, nargs=2, metavar=("LOW", "HIGH"),
                   help="random zoom range per step")
    p.add_argument("--rotate", type=argtypes.non_negative_float, default=0.0,
                   help="random rotation of up to N degrees per step")

    p.add_argument("--diversity", type=argtypes.positive_int, metavar="N",
                   help="N images per channel of one layer, kept apart by a Gram-similarity penalty")
    p.add_argument("--diversity-weight", type=argtypes.non_negative_float, default=10.0,
                   help="weight of that penalty, relative to each image's own activation, so one weight "
                        "suits any layer (default: 10)")
    p.add_argument("--combine", nargs="+", metavar="C:W",
                   help="one image for a weighted sum of channels of one layer, e.g. 3:1 7:-0.5")
    p.add_argument("--direction", metavar="FILE.npy",
                   help="images for directions (C,) or (K, C) of one layer's channels, from a .npy file")
    p.add_argument("--position", type=argtypes.non_negative_int, nargs=2, metavar=("I", "J"),
                   help="--combine/--direction at this position of the map instead of the mean over positions")
    p.add_argument("--cosine-power", type=argtypes.non_negative_float, default=0.0,
                   help="--combine/--direction: reward pointing along the direction (default: 0, a dot product)")

    p = tools.add_parser("atlas", help=TOOLS["atlas"][1], description=TOOLS["atlas"][1])
    _add_common(p, index=False)
    p.add_argument("--layer", help="layer (default: the last Conv2d)")
    p.add_argument("--grid", type=argtypes.positive_int, default=6, help="cells per side (default: 6)")
    p.add_argument("--positions", type=_positions, default="mean",
                   help="'mean' (one activation per image, the default) or N positions drawn per image")
    p.add_argument("--limit", type=argtypes.positive_int, default=1000, help="use the first N images (default: 1000)")
    p.add_argument("--min-count", type=argtypes.positive_int, default=3,
                   help="draw cells with at least N activations (default: 3)")
    p.add_argument("--method", choices=("auto", "umap", "tsne"), default="auto",
                   help="layout: UMAP if umap-learn is installed (auto, the default), or t-SNE")
    p.add_argument("--cosine-power", type=argtypes.non_negative_float, default=1.0,
                   help="reward pointing along each cell's mean (default: 1)")
    p.add_argument("--steps", type=argtypes.positive_int, default=200, help="gradient steps (default: 200)")
    p.add_argument("--lr", type=argtypes.positive_float, default=0.05, help="Adam step (default: 0.05)")
    p.add_argument("--jitter", type=argtypes.non_negative_int, default=1,
                   help="random shift of up to N pixels per step (default: 1)")
    p.add_argument("--parametrization", choices=("pixel", "fourier"), default="pixel",
                   help="render the cells in pixels or a 1/f-scaled spectrum (default: pixel)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="random seed (default: 0)")

    p = tools.add_parser("fooling", help=TOOLS["fooling"][1], description=TOOLS["fooling"][1])
    _add_common(p, data=False, index=False)
    p.add_argument("--generator", choices=("cppn", "pattern"), default="cppn",
                   help="CPPN images (default) or regular patterns (sums of gratings)")
    p.add_argument("--targets", type=argtypes.non_negative_int, nargs="+", metavar="K",
                   help="classes to fool (default: all)")
    p.add_argument("--generations", type=argtypes.non_negative_int, default=200,
                   help="generations at most (default: 200)")
    p.add_argument("--population", type=argtypes.positive_int, default=32,
                   help="children per generation (default: 32)")
    p.add_argument("--threshold", type=argtypes.probability, default=0.99,
                   help="confidence at which a class is done (default: 0.99)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="random seed (default: 0)")

    p = tools.add_parser("to-class", help=TOOLS["to-class"][1], description=TOOLS["to-class"][1])
    _add_common(p)
    p.add_argument("--image", metavar="FILE", help="an image file or sample name instead of --index")
    p.add_argument("--target", type=int, required=True, help="the class to push the image towards")
    p.add_argument("--threshold", type=argtypes.probability, default=0.9, help="probability to reach (default: 0.9)")
    p.add_argument("--max-steps", type=argtypes.positive_int, default=300, help="give up after N steps (default: 300)")
    p.add_argument("--lr", type=argtypes.positive_float, default=0.01, help="step, in RMS pixel change (default: 0.01)")

    p = tools.add_parser("invert", help=TOOLS["invert"][1], description=TOOLS["invert"][1])
    _add_common(p)
    p.add_argument("--image", metavar="FILE", help="an image file or sample name instead of --index")
    p.add_argument("--layers", nargs="+", help="layers (default: every activation, pooling and the logits)")
    p.add_argument("--steps", type=argtypes.positive_int, default=200, help="evaluations of the loss (default: 200)")
    p.add_argument("--method", choices=("lbfgs", "adam"), default="lbfgs", help="optimizer (default: lbfgs)")
    p.add_argument("--tv-weight", type=argtypes.non_negative_float, default=0.3,
                   help="total-variation weight (default: 0.3)")
    p.add_argument("--tv-beta", type=argtypes.positive_float, default=2.0, help="total-variation exponent (default: 2)")
    p.add_argument("--alpha-weight", type=argtypes.non_negative_float, default=1e-3,
                   help="alpha-norm weight (default: 0.001)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="seed of the start image (default: 0)")

    p = tools.add_parser("dream", help=TOOLS["dream"][1], description=TOOLS["dream"][1])
    _add_common(p, data=False, index=False)
    p.add_argument("--image", default="grace_hopper", metavar="FILE",
                   help="an image file or a sample: grace_hopper (default), present, flower, china")
    p.add_argument("--size", type=argtypes.image_side, default=256, help="longer side in pixels (default: 256)")
    p.add_argument("--layers", nargs="+", help="layers to dream at, one image each "
                                               "(default: a rectified convolution two thirds up)")
    p.add_argument("--channel", type=int, help="amplify this channel only")
    p.add_argument("--steps", type=argtypes.positive_int, default=10, help="steps per octave (default: 10)")
    p.add_argument("--octaves", type=argtypes.positive_int, default=4, help="octaves (default: 4)")
    p.add_argument("--octave-scale", type=argtypes.above_one, default=1.4,
                   help="size ratio between octaves (default: 1.4)")
    p.add_argument("--lr", type=argtypes.positive_float, default=0.01,
                   help="step, in mean absolute pixel change (default: 0.01)")
    p.add_argument("--jitter", type=argtypes.non_negative_int, default=8,
                   help="random shift of up to N pixels (default: 8)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="random seed (default: 0)")

    p = tools.add_parser("style", help=TOOLS["style"][1], description=TOOLS["style"][1])
    _add_common(p, data=False, index=False)
    p.add_argument("--content", default="grace_hopper", metavar="FILE",
                   help="content image file or sample name (default: grace_hopper)")
    p.add_argument("--style", default="flower", metavar="FILE",
                   help="style image file or sample name (default: flower)")
    p.add_argument("--texture", action="store_true", help="no content: synthesize a texture from --style")
    p.add_argument("--size", type=argtypes.image_side, default=256,
                   help="output side: a centre square of N x N (default: 256)")
    p.add_argument("--style-size", type=argtypes.image_side, help="side of the style image (default: --size)")
    p.add_argument("--random-weights", type=argtypes.non_negative_int, metavar="SEED",
                   help="use a network of the same shape with random weights drawn from SEED")
    p.add_argument("--content-layer",
                   help="layer for the content loss (default: a rectified convolution two thirds up)")
    p.add_argument("--style-layers", nargs="+",
                   help="layers for the style loss (default: the first rectified convolution of each block)")
    p.add_argument("--statistics", choices=("gram", "mean_var"), default="gram",
                   help="style statistics: Gram matrices or per-channel mean and variance (default: gram)")
    p.add_argument("--method", choices=("lbfgs", "adam"), default="lbfgs", help="optimizer (default: lbfgs)")
    p.add_argument("--steps", type=argtypes.positive_int, default=200, help="evaluations of the loss (default: 200)")
    p.add_argument("--lr", type=argtypes.positive_float, default=0.02, help="Adam step (default: 0.02)")
    p.add_argument("--content-weight", type=argtypes.non_negative_float, default=1.0,
                   help="content weight (default: 1)")
    p.add_argument("--style-weight", type=argtypes.non_negative_float, default=100.0,
                   help="style weight (default: 100)")
    p.add_argument("--tv-weight", type=argtypes.non_negative_float, default=1.0,
                   help="total-variation weight (default: 1)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="seed of a noise start (default: 0)")

    for name, (fn, _) in TOOLS.items():
        # ``handler`` as well as ``func``: fastconv's own commands dispatch on ``handler``.
        tools.choices[name].set_defaults(func=run, handler=run, viz_function=fn)
    return viz


# The name every command module gives the function that adds its commands.
add_parsers = add_viz_parser


def run(args):
    """Run the viz tool chosen on the command line; returns the exit status."""
    from fastconv.cli.train import print_lines
    from fastconv.data import DataError

    try:
        ctx = _Context(args)
        args.viz_function(ctx, args)
    except (ValueError, ImportError, DataError) as err:
        raise _usage_error(str(err)) from None
    print_lines(f"wrote {args.out}")
    return 0
