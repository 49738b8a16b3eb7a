"""``fastconv imagenet ...``: pretrained ImageNet networks from a weights file.

    fastconv imagenet predict photo.jpg --weights vgg16.pth
    fastconv imagenet predict photo.jpg --weights vgg16_weights_tf_dim_ordering_tf_kernels.h5
    fastconv imagenet convert --weights vgg16.pth --out vgg16.npz
    fastconv imagenet filters --weights vgg16.npz --out filters.png
    fastconv imagenet class-model --weights vgg16.npz --class "sea snake" --out sea_snake.png
    fastconv imagenet to-class photo.jpg --weights vgg16.npz --class triceratops --out triceratops.png
    fastconv imagenet dream photo.jpg --weights vgg16.npz --out dream.png
    fastconv imagenet style photo.jpg painting.jpg --weights vgg19.npz --out styled.png

The last five are the image-optimization experiments of the "how
convolutional networks see the world" notebook (Keras's VGG16), run with
fastconv.analysis.optimize and fastconv.analysis.optimize.style.

``--weights`` is a PyTorch state_dict (.pth, .pt), a .safetensors or .npz
file, Keras weights (.h5), or a fastconv model file written by ``convert``
(which needs no ``--arch``). fastconv downloads nothing: the file is yours.
"""
import os
import zipfile

import numpy as np

from fastconv.cli.argtypes import image_side as _image_side
from fastconv.cli.argtypes import non_negative_float as _non_negative_float
from fastconv.cli.argtypes import positive_float as _positive_float
from fastconv.cli.argtypes import positive_int as _positive_int
from fastconv.cli.argtypes import probability as _probability

__all__ = ["add_parsers", "ARCHITECTURES"]

# name -> (fastconv.models factory name, batchnorm)
ARCHITECTURES = {
    "vgg16": ("vgg16", False),
    "vgg19": ("vgg19", False),
    "vgg16_bn": ("vgg16", True),
    "vgg19_bn": ("vgg19", True),
}
_TOP_LAYERS = ("avgpool", "flatten")


def _usage_error(message):
    # A ValueError rather than cli.UsageError: main() prints both as one line, and the
    # class stays the same when the command line runs as ``python -m fastconv.cli``.
    return ValueError(message)



def _is_fastconv_model(path):
    """True for a model file written by Sequential.save (an .npz with an architecture entry)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "architecture.npy" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _convolutional_part(model):
    """The layers before the head (avgpool/flatten), as a model of their own (sharing the layers)."""
    from fastconv.nn.model import Sequential

    pairs = model.named_layers()
    end = next((i for i, (name, _) in enumerate(pairs) if name in _TOP_LAYERS), len(pairs))
    part = Sequential(pairs[:end])
    part.meta = {k: v for k, v in model.meta.items() if k != "classes"}
    part.train(model.training)
    return part


def load_model(weights, arch="vgg16", include_top=True, preprocessing=None):
    """The network of ``arch`` with the weights of the file ``weights``, in evaluation mode.

    A fastconv model file is loaded as it is (``arch`` is then ignored).
    Without the head (``include_top=False``) the model is fully convolutional;
    a file with a head may be used for it.
    """
    import fastconv
    from fastconv import models
    from fastconv.models import imagenet
    from fastconv.models.weights import load_weights

    if not os.path.exists(weights):
        raise FileNotFoundError(f"no weights file at {weights}")
    if _is_fastconv_model(weights):
        model = fastconv.load(weights)
        if preprocessing is not None:
            model.meta["preprocessing"] = preprocessing
            model.meta["normalization"] = imagenet.normalization(preprocessing)
        if not include_top:
            model = _convolutional_part(model)
    else:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        factory, batchnorm = ARCHITECTURES[arch]
        model = getattr(models, factory)(include_top=include_top, batchnorm=batchnorm, seed=0)
        try:
            load_weights(model, weights, strict=include_top, preprocessing=preprocessing)
        except RuntimeError as error:  # PyTorch or h5py missing
            raise _usage_error(str(error)) from None
        model.meta["model"] = arch if include_top else f"{arch} without its head"
    return model.eval()


def _add_model_options(parser):
    parser.add_argument("--weights", required=True, metavar="FILE",
                        help="weights: a PyTorch state_dict (.pth, .pt), .safetensors, .npz, Keras .h5, "
                             "or a fastconv model file written by 'fastconv imagenet convert'")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="vgg16",
                        help="the network the weights are for (default vgg16; ignored for a fastconv model file)")
    parser.add_argument("--preprocessing", choices=("torch", "caffe"),
                        help="what the weights expect: torch (RGB, ImageNet mean/std) or caffe (mean "
                             "subtraction in 0-255, BGR for Keras files); default: caffe for Keras .h5 "
                             "files, what the file records, else torch")
    parser.add_argument("--threads", type=_positive_int, help="threads (default: all cores)")


# ------------------------------------------------------------------ predict


def cmd_predict(args):
    import fastconv
    from fastconv.models import imagenet

    fastconv.set_num_threads(args.threads)
    model = load_model(args.weights, args.arch, preprocessing=args.preprocessing)
    mode = model.meta.get("preprocessing") or "torch"
    x = imagenet.preprocess(args.images, mode, size=args.size, resize=args.resize, dtype=model.dtype)
    logits = model.predict(x, batch_size=8)
    if logits.ndim != 2:
        raise _usage_error(f"the model in {args.weights} returns maps of shape {logits.shape[1:]}, "
                           "not class scores: it has no classifier head")
    classes = model.meta.get("classes")
    if classes is not None and len(classes) != logits.shape[1]:
        classes = None
    for path, ranked in zip(args.images, imagenet.decode(logits, args.top, classes)):
        width = max(len(name) for _, name, _ in ranked)
        print(path)
        for rank, (index, name, probability) in enumerate(ranked, start=1):
            print(f"  {rank}. {name:<{width}}  {probability:7.2%}  (class {index})")
    return 0


# ------------------------------------------------------------------ convert


def cmd_convert(args):
    from fastconv.models.weights import save_weights

    out = args.out
    extension = os.path.splitext(out)[1].lower()
    if extension not in (".npz", ".safetensors"):
        raise _usage_error(f"--out must end in .npz or .safetensors, got {out}")
    model = load_model(args.weights, args.arch, include_top=not args.no_top, preprocessing=args.preprocessing)
    if extension == ".safetensors" or args.weights_only:
        save_weights(model, out)
        what = "weights (fastconv.models.weights.load_weights)"
    else:
        model.save(out)
        what = "fastconv model (fastconv.load, fastconv viz, --weights of these commands)"
    print(f"{args.weights} -> {out}: {what}, {model.num_parameters():,} parameters, "
          f"preprocessing {model.meta.get('preprocessing')}")
    return 0


# ------------------------------------------------------------------ image-optimization recipes

SEED_LAYERS = tuple(f"block{b}_conv1" for b in range(1, 6))
# Gatys et al.: style from the first convolution of every block, content from block 4's second.
STYLE_LAYERS = tuple(f"block{b}_conv1_relu" for b in range(1, 6))
CONTENT_LAYER = "block4_conv2_relu"


def _class_index(text, classes):
    """A class given as an index or a name (case-insensitive) -> its index."""
    count = len(classes) if classes is not None else None
    if text.strip().isdigit():
        index = int(text)
        if count is not None and not 0 <= index < count:
            raise _usage_error(f"--class {index} is out of range: the model has {count} classes (0..{count - 1})")
        return index
    if classes is None:
        raise _usage_error(f"the model has no class names; give --class as a number, not {text!r}")
    lowered = [name.lower() for name in classes]
    if text.strip().lower() in lowered:
        return lowered.index(text.strip().lower())
    import difflib

    close = difflib.get_close_matches(text.lower(), lowered, n=3)
    hint = f"; did you mean {', '.join(repr(classes[lowered.index(c)]) for c in close)}?" if close else ""
    raise _usage_error(f"no ImageNet class called {text!r}{hint}")


def _pixels(path, resize, size):
    """An image file as (3, H, W) float64 pixels in [0, 1], resized (and cropped when size is given)."""
    from fastconv.models import imagenet

    return imagenet.resize_and_crop(path, size=size, resize=resize).transpose(2, 0, 1) / 255.0


def _save_pixels(pixels, path):
    from PIL import Image

    from fastconv._files import atomic_write

    image = Image.fromarray((np.clip(pixels, 0.0, 1.0).transpose(1, 2, 0) * 255.0).round().astype(np.uint8))
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def _check_png(path, option="--out"):
    if path is not None and not path.lower().endswith(".png"):
        raise _usage_error(f"{option} must be a .png file, got {path}")


def _start(args, include_top):
    import fastconv

    _check_png(args.out)
    _check_png(getattr(args, "result", None), "--result")
    fastconv.set_num_threads(args.threads)
    return load_model(args.weights, args.arch, include_top=include_top, preprocessing=args.preprocessing)


def _check_layers(model, names):
    known = [name for name, _ in model.named_layers()]
    for name in names:
        if name not in known:
            raise _usage_error(f"the model has no layer {name!r}; its layers are {', '.join(known)}")


def _wrote(args):
    extra = f" and {args.result}" if getattr(args, "result", None) else ""
    print(f"wrote {args.out}{extra}")
    return 0


def cmd_filters(args):
    from fastconv.analysis.optimize.figures import plot_feature_grid
    from fastconv.analysis.optimize.methods import feature_grid

    model = _start(args, include_top=False)
    layers = args.layers or list(SEED_LAYERS)
    _check_layers(model, layers)
    grid = feature_grid(model, layers, per_layer=args.per_layer, channels=args.channels, steps=args.steps,
                        size=args.size, lr=args.lr, jitter=args.jitter, seed=args.seed)
    plot_feature_grid(grid, path=args.out,
                      title=f"{model.meta.get('model') or os.path.basename(args.weights)}: "
                            "images maximizing a channel's mean\n"
                            f"({args.size}x{args.size}, {args.steps} Adam steps, tiles stretched)")
    return _wrote(args)


def cmd_class_model(args):
    from fastconv.analysis.optimize.figures import plot_class_models
    from fastconv.analysis.optimize.methods import class_model

    model = _start(args, include_top=True)
    classes = model.meta.get("classes")
    targets = [_class_index(text, classes) for text in args.classes]
    result = class_model(model, targets, steps=args.steps, size=args.size, lr=args.lr, l2_decay=args.l2_decay,
                         blur_every=args.blur_every, jitter=args.jitter, seed=args.seed)
    plot_class_models(result, classes=classes, path=args.out)
    if args.result:
        _save_pixels(result.images[0], args.result)
    for unit, value, probability in zip(result.units, result.values, result.history["probability"][-1]):
        name = classes[unit[0]] if classes else unit[0]
        print(f"{name} (class {unit[0]}): score {value:.2f}, probability {probability:.4f} at the last step")
    return _wrote(args)


def cmd_to_class(args):
    from fastconv.analysis.optimize.figures import plot_to_class
    from fastconv.analysis.optimize.methods import to_class

    model = _start(args, include_top=True)
    classes = model.meta.get("classes")
    target = _class_index(args.target, classes)
    image = _pixels(args.image, args.resize, args.size)
    result = to_class(model, image, target, threshold=args.threshold, max_steps=args.max_steps, lr=args.lr)
    plot_to_class(result, classes=classes, path=args.out)
    if args.result:
        _save_pixels(result.image, args.result)
    name = classes[target] if classes else str(target)
    print(f"p({name}) went from {result.history['probability'][0]:.4f} to {result.probability:.4f} "
          f"in {result.steps} steps ({'reached' if result.reached else 'did not reach'} {args.threshold:g})")
    return _wrote(args)


def cmd_dream(args):
    from fastconv.analysis.optimize.figures import plot_dream
    from fastconv.analysis.optimize.methods import deep_dream

    model = _start(args, include_top=False)
    _check_layers(model, args.layers)
    image = _pixels(args.image, args.resize, None)
    dreams = [deep_dream(model, image, layer, steps=args.steps, octaves=args.octaves,
                         octave_scale=args.octave_scale, lr=args.lr, seed=args.seed) for layer in args.layers]
    plot_dream(dreams, path=args.out)
    if args.result:
        _save_pixels(dreams[-1].image, args.result)
    return _wrote(args)


def cmd_style(args):
    from fastconv.analysis.optimize.figures import plot_style
    from fastconv.analysis.optimize.style import style_transfer

    model = _start(args, include_top=False)
    style_layers = args.style_layers or list(STYLE_LAYERS)
    content_layer = args.content_layer or CONTENT_LAYER
    _check_layers(model, style_layers + [content_layer])
    content = _pixels(args.content, args.resize, None)
    style = _pixels(args.style, args.resize, None)
    result = style_transfer(model, content, style, steps=args.steps, content_layer=content_layer,
                            style_layers=style_layers, style_weight=args.style_weight, tv_weight=args.tv_weight)
    plot_style(result, content, style, path=args.out)
    if args.result:
        _save_pixels(result.image, args.result)
    return _wrote(args)





def _add_figure_options(parser, result=True):
    parser.add_argument("--out", required=True, metavar="FILE.png", help="where to write the figure")
    if result:
        parser.add_argument("--result", metavar="FILE.png", help="also write the optimized image itself")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")


def _add_recipe_parsers(sub):
    filters = sub.add_parser(
        "filters", help="images that maximize filters of block1..block5 (feature visualization)",
        description="Gradient ascent on the input from a noisy grey image to maximize the mean "
                    "pre-activation of some channels of each --layers layer, on the convolutional "
                    "part of the network (any image size).")
    _add_model_options(filters)
    filters.add_argument("--layers", nargs="+", metavar="LAYER",
                         help=f"layers (default: {' '.join(SEED_LAYERS)})")
    filters.add_argument("--per-layer", type=_positive_int, default=3,
                         help="channels per layer, spread over its range (default 3)")
    filters.add_argument("--channels", type=int, nargs="+", metavar="C",
                         help="these channels in every layer instead of --per-layer")
    filters.add_argument("--size", type=_image_side, default=128, help="image side in pixels (default 128)")
    filters.add_argument("--steps", type=_positive_int, default=64, help="Adam steps (default 64)")
    filters.add_argument("--lr", type=_positive_float, default=0.05, help="Adam step in pixels (default 0.05)")
    filters.add_argument("--jitter", type=int, default=4, help="random shift per step in pixels (default 4)")
    _add_figure_options(filters, result=False)
    filters.set_defaults(handler=cmd_filters)

    class_model = sub.add_parser(
        "class-model", help="the image that maximizes a class score (e.g. sea snake, class 65)",
        description="Gradient ascent on the input, from the mean image, on the pre-softmax score of "
                    "each --class (Simonyan et al. 2014), with L2 decay, blur and jitter.")
    _add_model_options(class_model)
    class_model.add_argument("--class", dest="classes", nargs="+", required=True, metavar="CLASS",
                             help="class indices or names, e.g. 65 or 'sea snake' (one image each)")
    class_model.add_argument("--size", type=_image_side, default=224, help="image side (default 224)")
    class_model.add_argument("--steps", type=_positive_int, default=100, help="steps (default 100)")
    class_model.add_argument("--lr", type=_positive_float, default=0.05,
                             help="step: its root mean square, in pixels (default 0.05)")
    class_model.add_argument("--l2-decay", type=_non_negative_float, default=0.01,
                             help="fraction of the image's distance to the mean removed per step (default 0.01)")
    class_model.add_argument("--blur-every", type=int, default=4, help="blur every N steps, 0 never (default 4)")
    class_model.add_argument("--jitter", type=int, default=8, help="random shift per step in pixels (default 8)")
    _add_figure_options(class_model)
    class_model.set_defaults(handler=cmd_class_model)

    to_class = sub.add_parser(
        "to-class", help="push an image towards a class (e.g. triceratops, class 51) until it is predicted",
        description="Move the pixels of IMAGE along the gradient of log p(CLASS) until the network "
                    "gives it --threshold, and plot the image before and after with p per step.")
    to_class.add_argument("image", metavar="IMAGE", help="image file")
    _add_model_options(to_class)
    to_class.add_argument("--class", dest="target", required=True, metavar="CLASS",
                          help="class index or name, e.g. 51 or triceratops")
    to_class.add_argument("--threshold", type=_probability, default=0.9, help="target probability (default 0.9)")
    to_class.add_argument("--max-steps", type=_positive_int, default=60, help="at most this many steps (default 60)")
    to_class.add_argument("--lr", type=_positive_float, default=0.01,
                          help="step: its root mean square, in pixels (default 0.01)")
    to_class.add_argument("--resize", type=_positive_int, default=256, help="shorter side (default 256)")
    to_class.add_argument("--size", type=_image_side, default=224, help="central crop (default 224)")
    _add_figure_options(to_class)
    to_class.set_defaults(handler=cmd_to_class)

    dream = sub.add_parser(
        "dream", help="DeepDream: amplify what a layer sees in an image",
        description="Gradient ascent on half the squared activations of each --layers layer, over "
                    "octaves, on the convolutional part of the network (any image size).")
    dream.add_argument("image", metavar="IMAGE", help="image file")
    _add_model_options(dream)
    dream.add_argument("--layers", nargs="+", default=["block4_conv3_relu"], metavar="LAYER",
                       help="one dream per layer (default block4_conv3_relu)")
    dream.add_argument("--resize", type=_positive_int, default=256, help="shorter side of the image (default 256)")
    dream.add_argument("--steps", type=_positive_int, default=10, help="steps per octave (default 10)")
    dream.add_argument("--octaves", type=_positive_int, default=3, help="octaves (default 3)")
    dream.add_argument("--octave-scale", type=_positive_float, default=1.4, help="scale between octaves (default 1.4)")
    dream.add_argument("--lr", type=_positive_float, default=0.01, help="step size in pixels (default 0.01)")
    _add_figure_options(dream)
    dream.set_defaults(handler=cmd_dream)

    style = sub.add_parser(
        "style", help="neural style transfer: CONTENT painted in the style of STYLE",
        description="Gatys et al.'s style transfer on the convolutional part of the network: content "
                    f"from {CONTENT_LAYER}, style (Gram matrices) from {', '.join(STYLE_LAYERS)}, "
                    "optimized with L-BFGS.")
    style.add_argument("content", metavar="CONTENT", help="content image file")
    style.add_argument("style", metavar="STYLE", help="style image file")
    _add_model_options(style)
    style.add_argument("--resize", type=_positive_int, default=224, help="shorter side of both images (default 224)")
    style.add_argument("--steps", type=_positive_int, default=100, help="evaluations of the loss (default 100)")
    style.add_argument("--content-layer", metavar="LAYER", help=f"default {CONTENT_LAYER}")
    style.add_argument("--style-layers", nargs="+", metavar="LAYER", help=f"default {' '.join(STYLE_LAYERS)}")
    style.add_argument("--style-weight", type=_non_negative_float, default=10.0, help="default 10")
    style.add_argument("--tv-weight", type=_non_negative_float, default=10.0, help="default 10")
    _add_figure_options(style)
    style.set_defaults(handler=cmd_style)


# ------------------------------------------------------------------ parser


def add_parsers(commands):
    """Add the ``imagenet`` command group to fastconv's argparse sub-commands."""
    group = commands.add_parser(
        "imagenet", help="pretrained ImageNet networks (VGG-16/19) from a weights file you have",
        description="Load ImageNet weights (PyTorch .pth, .safetensors, .npz or Keras .h5) into "
                    "fastconv's VGG-16/19 and use them. Nothing is downloaded.",
    )
    sub = group.add_subparsers(dest="imagenet_command", metavar="COMMAND", required=True)

    predict = sub.add_parser(
        "predict", help="the top-5 ImageNet classes of images, as words",
        description="Resize each image so its shorter side is --resize pixels, crop the central "
                    "--size square, normalize as the weights expect and print the most probable "
                    "ImageNet classes with their probabilities.")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    _add_model_options(predict)
    predict.add_argument("--top", type=_positive_int, default=5, help="classes to print per image (default 5)")
    predict.add_argument("--resize", type=_positive_int, default=256,
                         help="shorter side after resizing, in pixels (default 256)")
    predict.add_argument("--size", type=_image_side, default=224, help="side of the central crop (default 224)")
    predict.set_defaults(handler=cmd_predict)

    convert = sub.add_parser(
        "convert", help="save imported weights as a fastconv model file or as .safetensors",
        description="Import --weights into --arch and write --out: a .npz fastconv model file "
                    "(architecture, weights, class names and preprocessing; loads without --arch, "
                    "works with 'fastconv viz') or, for .safetensors or with --weights-only, the weights alone.")
    _add_model_options(convert)
    convert.add_argument("--out", required=True, metavar="FILE", help="output file, .npz or .safetensors")
    convert.add_argument("--no-top", action="store_true",
                         help="keep only the convolutional part (fully convolutional, any image size)")
    convert.add_argument("--weights-only", action="store_true",
                         help="write only the weights to the .npz (fastconv.models.weights.load_weights reads it)")
    convert.set_defaults(handler=cmd_convert)

    _add_recipe_parsers(sub)
    return group
