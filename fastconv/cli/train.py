"""``fastconv train``: train a model into a run folder, or resume it.

    fastconv train --dataset mnist --model mnist2 --epochs 8 --optimizer sgd --lr 0.08 --out runs/mnist
    fastconv train --recipe airbench94 --dataset folder:cifar10-train-jpeg.tar.gz --out runs/airbench
    fastconv train --out runs/mnist --resume

With ``--recipe`` (a preset of ``fastconv.train.recipes`` or a JSON file of
one) the recipe sets the model, optimizer, schedule, augmentation, loss and
evaluation, and any option given as well overrides it; the resolved recipe
is written to the run folder, which ``--resume`` reads back.

Also what every command that trains shares: the built-in models and
optimizers, the data of a run (its --limit subset and validation part), and
the training itself (``train_run``, which ``fastconv demo`` calls too).

Under ``mpiexec -n N`` the same command trains on N ranks
(``fastconv.train.distributed``); only rank 0 prints and writes files.
"""
import os
from pathlib import Path

from fastconv.cli.argtypes import UsageError
from fastconv.cli.argtypes import fraction as _fraction
from fastconv.cli.argtypes import image_side as _image_side
from fastconv.cli.argtypes import non_negative_float as _non_negative_float
from fastconv.cli.argtypes import non_negative_int as _non_negative_int
from fastconv.cli.argtypes import positive_int as _positive_int
from fastconv.cli.argtypes import unit_interval as _unit_interval
from fastconv.data.datasets import short_name
from fastconv.data.transforms import TTA_MODES
from fastconv.train.rundir import (
    BEST_CHECKPOINT,
    BEST_MODEL,
    CONFIG,
    FIGURES,
    FINAL_MODEL,
    HISTORY_CSV,
    HISTORY_JSON,
    LAST_CHECKPOINT,
    RECIPE,
    RunDir,
)

__all__ = [
    "add_parsers", "cmd_train", "train_run", "claim_folder", "add_force_option", "build_model", "load_data",
    "resume_hint", "set_threads", "print_lines", "load_run_recipe",
]

# name -> (the image side it takes, the constructor in fastconv.models, its options)
MODELS = {
    "mnist2": (28, "mnist2", {}),
    "mnist2-bn": (28, "mnist2", {"batchnorm": True}),
    "cifar6": (32, "cifar6", {}),
    "airbench94": (32, "airbench94", {}),
    **{name: (32, name, {}) for name in ("resnet20", "resnet32", "resnet44", "resnet56")},
    **{name: (224, name, {}) for name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2")},
}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle", "piecewise")

# Options that define a run: a resumed run keeps them (see _merge_config).
TRAIN_DEFAULTS = {
    "dataset": None,
    "model": None,
    "epochs": 10,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": None,
    "momentum": 0.0,
    "weight_decay": None,
    "schedule": "none",
    "step_size": None,
    "augment": False,
    "val_fraction": 0.1,
    "seed": 0,
    "limit": None,
    "adversarial": None,
    "adv_eps": None,
    "adv_steps": None,
    "init": "he",
    "image_size": None,
    "skip_bad_images": False,
    "recipe": None,
    "label_smoothing": None,
    "tta": None,
    "test_fraction": None,
    "sync_bn": False,
}
# What a recipe sets, by the option's name: a recipe run takes these from the
# recipe unless the option is given.
RECIPE_OPTIONS = ("model", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                  "step_size", "label_smoothing", "tta", "init")
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 1e-2}


# ------------------------------------------------------------------ helpers


def set_threads(threads):
    """Set the kernels' threads: the number given, else the cores this
    process may run on, divided among the ranks of its node under MPI.

    A launcher may bind a process to fewer cores than the machine has (Open
    MPI binds each rank to one core when it starts one or two): more
    threads than those cores take turns on them, at the speed of one, so
    that case is said on stderr."""
    import sys

    import fastconv
    from fastconv._runtime import allowed_cores
    from fastconv.train.distributed import default_threads, world

    comm = world()
    if threads is None:
        threads = default_threads(comm)
    allowed = allowed_cores()
    if threads > allowed and comm.is_root:
        print(f"warning: {threads} threads, but this process may only run on {allowed} "
              f"core{'' if allowed == 1 else 's'} (its CPU affinity): the threads will take turns. "
              "Under mpiexec, launch with --bind-to none (or bind each rank to as many cores "
              "as threads), or ask for fewer --threads.", file=sys.stderr, flush=True)
    return fastconv.set_num_threads(threads)


def print_lines(*lines):
    """Print, on rank 0 only when several ranks run the command."""
    from fastconv.train.distributed import world

    if world().is_root:
        for line in lines:
            print(line, flush=True)


def _ranks_text(threads):
    from fastconv.train.distributed import world

    size = world().size
    per_rank = f"{threads} thread{'' if threads == 1 else 's'}"
    return f"{size} MPI ranks x {per_rank} each" if size > 1 else per_rank


# ------------------------------------------------------------------ data and model


def load_data(run, data_dir, name=None):
    """(dataset, (x_train, y_train), (x_val, y_val)) of a run (a RunDir): its data set,
    or the one named, with the run's --limit subset of its own, and the validation part
    its configuration holds out."""
    from fastconv.data import stratified_split

    config = run.config
    dataset = run.load_dataset(name, data_dir)
    x, y = dataset.x_train, dataset.y_train
    train_idx, val_idx = stratified_split(y, config["val_fraction"], seed=config["seed"])
    return dataset, (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def _check_model_fits(model_name, dataset):
    channels, height, width = dataset.input_shape
    side = MODELS[model_name][0]
    if (height, width) != (side, side):
        fits = [name for name, (s, _, _) in MODELS.items() if (s, s) == (height, width)]
        hint = f"; use --model {fits[0]}" if fits else ""
        if dataset.name.startswith("folder:"):
            hint += f"{' or' if fits else ';'} --image-size {side} to resize the images"
        raise UsageError(
            f"model {model_name} takes {side}x{side} images, but {dataset.name} has {height}x{width} images{hint}"
        )


def _default_model(dataset):
    _, height, width = dataset.input_shape
    for name, (side, _, _) in MODELS.items():
        if (height, width) == (side, side):
            return name
    raise UsageError(
        f"{dataset.name} has {height}x{width} images; the built-in models take "
        + " or ".join(f"{s}x{s} ({n})" for n, (s, _, _) in MODELS.items())
    )


def build_model(config, dataset, recipe=None):
    """The run's model, freshly initialized (a recipe run's as its recipe builds
    it, without the data-dependent whitening: for loading a checkpoint)."""
    from fastconv import models

    _check_model_fits(config["model"], dataset)
    _, constructor, options = MODELS[config["model"]]
    if recipe is not None:
        model = recipe.build_model(dataset.num_classes, dataset.input_shape[0], config["seed"])
    elif constructor == "airbench94":
        model = models.airbench94(num_classes=dataset.num_classes, in_channels=dataset.input_shape[0],
                                  seed=config["seed"])
    else:
        model = getattr(models, constructor)(
            num_classes=dataset.num_classes, in_channels=dataset.input_shape[0], seed=config["seed"],
            init=config.get("init", "he"), **options)
    _describe_model(model, config, dataset)
    return model


def _describe_model(model, config, dataset):
    model.meta.update({
        "model": config["model"],
        "dataset": config["dataset"],
        "classes": list(dataset.classes),
        "input_shape": list(dataset.input_shape),
    })


def _build_optimizer(config, model, steps_per_epoch):
    from fastconv import optim

    name, lr, wd = config["optimizer"], config["lr"], config["weight_decay"]
    if name == "sgd":
        opt = optim.SGD(model, lr=lr, momentum=config["momentum"], weight_decay=wd)
    elif name == "adam":
        opt = optim.Adam(model, lr=lr, weight_decay=wd)
    else:
        opt = optim.AdamW(model, lr=lr, weight_decay=wd)
    epochs, schedule = config["epochs"], config["schedule"]
    if schedule == "step":
        sched = optim.StepLR(opt, step_size=config["step_size"], gamma=0.1)
    elif schedule == "cosine":
        sched = optim.CosineAnnealingLR(opt, T_max=epochs)
    elif schedule == "onecycle":
        sched = optim.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                 cycle_momentum=name != "sgd" or config["momentum"] > 0)
    else:
        sched = None
    return opt, sched


# ------------------------------------------------------------------ train


class _FigureWriter:
    """Redraws the training curves after every epoch."""

    def __init__(self, path, title):
        self.path = path
        self.title = title

    def on_epoch_end(self, trainer, record):
        from fastconv.train.figures import plot_history

        plot_history(trainer.history, self.path, title=self.title)


def load_run_recipe(run):
    """The Recipe of a run trained with --recipe (its recipe.json), else None."""
    from fastconv.train.recipes import Recipe

    values = run.read_recipe()
    if values is None:
        return None
    try:
        return Recipe.from_dict(values)
    except ValueError as error:
        raise UsageError(f"{run.recipe_path}: {error}") from None


def _resolve_recipe(given):
    """The recipe --recipe names, with the options given applied over it, and the
    options it sets, as the configuration records them."""
    from fastconv.train.recipes import load_recipe

    try:
        recipe = load_recipe(given["recipe"])
        overrides = {k: given[k] for k in RECIPE_OPTIONS if k in given}
        if overrides.get("schedule") == "step" and "step_size" not in overrides:
            overrides["step_size"] = max(1, overrides.get("epochs", recipe.epochs) // 3)
        recipe = recipe.replace(**overrides)
        if given.get("augment") and recipe.augment is None:
            recipe = recipe.replace(augment={"padding": 4, "flip": True})
    except (ValueError, TypeError) as error:
        raise UsageError(f"--recipe {given['recipe']}: {error}") from None
    spec = recipe.optimizer
    derived = {
        "recipe": recipe.name, "model": recipe.model, "epochs": recipe.epochs, "batch_size": recipe.batch_size,
        "optimizer": spec.name, "lr": spec.lr, "momentum": spec.momentum, "weight_decay": spec.weight_decay,
        "schedule": recipe.schedule.name, "step_size": recipe.schedule.step_size,
        "augment": recipe.augment is not None, "label_smoothing": recipe.loss.label_smoothing,
        "tta": recipe.evaluation.tta, "init": recipe.init,
    }
    return recipe, derived


def _merge_config(args, run):
    """The run's configuration, and its recipe (None without --recipe): stored
    (on --resume) or from the options, the recipe and the defaults."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if not args.resume and "recipe" in given:
        if "dataset" not in given:
            raise UsageError("--dataset is required (mnist, mnist-sample, fashion-mnist, cifar10 or folder:PATH)")
        for option in ("adversarial", "adv_eps", "adv_steps"):
            if option in given:
                raise UsageError(f"--{option.replace('_', '-')} does not go with --recipe")
        recipe, derived = _resolve_recipe(given)
        return {**TRAIN_DEFAULTS, **given, **derived}, recipe
    if not args.resume:
        if "dataset" not in given:
            raise UsageError("--dataset is required (mnist, mnist-sample, fashion-mnist, cifar10 or folder:PATH)")
        for option in ("label_smoothing", "tta"):
            if option in given:
                raise UsageError(f"--{option.replace('_', '-')} is a recipe's setting: give it with --recipe")
        if given.get("schedule") == "piecewise":
            raise UsageError("--schedule piecewise takes its milestones from a recipe: give it with --recipe")
        config = {**TRAIN_DEFAULTS, **given}
        if "momentum" in given and config["optimizer"] != "sgd":
            raise UsageError(f"--momentum is for --optimizer sgd; {config['optimizer']} has betas instead")
        if "step_size" in given and config["schedule"] != "step":
            raise UsageError("--step-size is for --schedule step")
        if ("adversarial" in given) != ("adv_eps" in given):
            raise UsageError("--adversarial fgsm|pgd and --adv-eps EPS go together: EPS is the size of the "
                             "perturbations in [0, 1] pixels (e.g. 0.3 for MNIST, 0.03 for CIFAR-10)")
        if "adv_steps" in given and config["adversarial"] != "pgd":
            raise UsageError("--adv-steps is for --adversarial pgd (FGSM takes one step)")
        config["lr"] = config["lr"] if config["lr"] is not None else DEFAULT_LR[config["optimizer"]]
        if config["weight_decay"] is None:
            config["weight_decay"] = DEFAULT_WEIGHT_DECAY[config["optimizer"]]
        if config["schedule"] == "step" and config["step_size"] is None:
            # Fixed now, so that resuming with more epochs keeps the steps where they were.
            config["step_size"] = max(1, config["epochs"] // 3)
        return config, None
    config = run.require_config()
    recipe = load_run_recipe(run)
    for key, value in given.items():
        stored = config.get(key)
        if key == "epochs" and value != stored:
            if config["schedule"] in ("cosine", "onecycle", "piecewise") or (recipe and recipe.lookahead):
                laid_out = f"the {config['schedule']} schedule" if config["schedule"] != "none" else "Lookahead"
                raise UsageError(
                    f"{run.folder} uses {laid_out}, which is laid out for "
                    f"--epochs {stored}; it cannot be changed on --resume"
                )
            config["epochs"] = value
            if recipe is not None:
                recipe = recipe.replace(epochs=value)
        elif value != stored:
            raise UsageError(
                f"{run.folder} was started with --{key.replace('_', '-')} {stored}, not {value}; "
                f"drop the option to resume it, or start a new run with another --out"
            )
    return config, recipe


def resume_hint(run_dir):
    return f"resume with: fastconv train --out {run_dir} --resume"


def add_force_option(parser, folder):
    """The --force option of the commands that train into a folder (see claim_folder)."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace the run or model already in {folder} (without it, a folder holding one "
                             "is refused); only the files a run writes are deleted")


def claim_folder(run, force, option="--out"):
    """Make ``run``'s folder ready for a new run: refuse, naming what is there,
    when it holds files a run writes (a finished or interrupted run, a model),
    unless ``force``, which deletes those files, and only those, first."""
    if run.folder.exists() and not run.folder.is_dir():
        raise UsageError(f"{option} {run.folder} is a file, where a folder is needed")
    existing = run.describe_existing()
    if existing is None:
        # Created once the data has loaded; refuse now a place it cannot go.
        ancestor = next(p for p in (run.folder, *run.folder.parents) if p.exists())
        if not ancestor.is_dir():
            raise UsageError(f"cannot create the folder {run.folder}: {ancestor} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UsageError(f"cannot create the folder {run.folder}: {ancestor} is not writable")
        return
    if not force:
        hint = f"{resume_hint(run.folder)}, " if run.config_path.exists() else ""
        raise UsageError(f"{run.folder} already holds {existing}; {hint}pass --force to replace it, "
                         f"or choose another {option}")
    run.remove_run_files()


def _recipe_setup(recipe, config, dataset, x_train):
    """The Trainer's arguments for a recipe run, its model described for the run."""
    _check_model_fits(config["model"], dataset)
    setup = recipe.build(x_train, dataset.num_classes, seed=config["seed"])
    _describe_model(setup.model, config, dataset)
    setup.model.meta["test_time_augmentation"] = recipe.evaluation.tta
    return setup


def _recipe_train_run(config, recipe, run, dataset, train, val, threads, resume):
    """train_run for a run with a recipe."""
    from fastconv.train import Trainer, evaluate
    from fastconv.train.distributed import world
    from fastconv.train.figures import plot_samples

    comm = world()
    (x_train, y_train), (x_val, y_val) = train, val
    setup = _recipe_setup(recipe, config, dataset, x_train)
    if config.get("sync_bn") and comm.size > 1:
        raise UsageError("--sync-bn is not available with --recipe: a recipe builds its optimizer on its own model")
    _create_folder(run)
    title = f"{config['model']} on {short_name(config['dataset'])}"
    figures = [_FigureWriter(run.figure("history"), title)] if comm.is_root else []
    trainer = Trainer(
        setup.model, setup.optimizer, setup.loss, setup.schedule, batch_size=recipe.batch_size,
        seed=config["seed"], normalize=setup.normalize, augment=setup.augment,
        schedule_interval=setup.schedule_interval, run_dir=run,
        callbacks=[*setup.callbacks, *figures], comm=comm,
    )
    if not resume and comm.is_root:
        run.write_config({**config, "threads": threads, "ranks": comm.size, "data_dir": config.get("data_dir")})
        run.write_recipe(recipe.to_dict())
        plot_samples(x_train, y_train, dataset.classes, run.figure("samples"),
                     seed=config["seed"], title=f"A random sample of the {short_name(config['dataset'])} training set")
    steps = -(-len(x_train) // recipe.batch_size)
    val_text = f"{len(x_val):,} validation" if len(x_val) else "no validation"
    print_lines(
        f"training {config['model']} ({setup.model.num_parameters():,} parameters) on {config['dataset']}: "
        f"{len(x_train):,} training and {val_text} images, {_ranks_text(threads)}",
        f"{recipe.describe()}; {steps} batches an epoch",
        f"data: {dataset.source}; test split: {dataset.test_split}",
        f"run folder: {run.folder}",
    )
    val_args = (x_val, y_val) if len(x_val) else (None, None)
    trainer.fit(x_train, y_train, config["epochs"], *val_args, resume=resume)
    if len(x_val) and recipe.evaluation.tta != "none":
        result = evaluate(setup.model, x_val, y_val, setup.normalize, tta=recipe.evaluation.tta, comm=comm)
        print_lines(f"validation accuracy with test-time augmentation ({recipe.evaluation.tta}): "
                    f"{result['accuracy']:.4f}")
    return trainer, dataset, (x_val, y_val)


def _create_folder(run):
    try:
        run.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from fastconv.cli import os_error_message

        raise UsageError(f"cannot create the folder {run.folder} ({os_error_message(exc)})") from None


def train_run(config, run_dir, data_dir, threads, resume, recipe=None):
    """Train as config (and recipe, for a --recipe run) says into the folder
    run_dir; return (trainer, dataset, (x_val, y_val))."""
    from fastconv.data import Augment, Normalize
    from fastconv.train import Trainer
    from fastconv.train.distributed import sync_batchnorm, world
    from fastconv.train.figures import plot_samples

    comm = world()
    threads = set_threads(threads)
    run = RunDir(run_dir, config=config)
    dataset, (x_train, y_train), (x_val, y_val) = load_data(run, data_dir, config["dataset"])
    if recipe is not None:
        config = {**config, "data_dir": data_dir}
        return _recipe_train_run(config, recipe, run, dataset, (x_train, y_train), (x_val, y_val), threads, resume)
    if config.get("model") is None:
        config["model"] = _default_model(dataset)
    model = build_model(config, dataset)
    if config.get("sync_bn") and comm.size > 1:
        model = sync_batchnorm(model, comm)
    steps_per_epoch = -(-len(x_train) // config["batch_size"])
    optimizer, schedule = _build_optimizer(config, model, steps_per_epoch)
    normalize = Normalize.fit(x_train)
    augment = None
    if config["augment"]:
        # Mirrored digits are other symbols; clothes and photos survive the flip.
        augment = Augment(padding=4 if dataset.input_shape[1] >= 32 else 2,
                          flip=config["dataset"] not in ("mnist", "mnist-sample"))
    adversarial = None
    if config.get("adversarial"):
        from fastconv.analysis.attacks.robustness import AdversarialTraining

        adversarial = AdversarialTraining(config["adversarial"], eps=config["adv_eps"],
                                          steps=config.get("adv_steps") or AdversarialTraining.PGD_STEPS)
    if comm.is_root:
        _create_folder(run)
    title = f"{config['model']} on {short_name(config['dataset'])}"
    trainer = Trainer(
        model, optimizer, schedule=schedule, batch_size=config["batch_size"], seed=config["seed"],
        normalize=normalize, augment=augment, run_dir=run,
        callbacks=[_FigureWriter(run.figure("history"), title)] if comm.is_root else [], adversarial=adversarial,
        comm=comm,
    )
    if not resume and comm.is_root:
        run.write_config({**config, "threads": threads, "ranks": comm.size, "data_dir": data_dir})
        plot_samples(x_train, y_train, dataset.classes, run.figure("samples"),
                     seed=config["seed"], title=f"A random sample of the {short_name(config['dataset'])} training set")
    val = f"{len(x_val):,} validation" if len(x_val) else "no validation"
    print_lines(
        f"training {config['model']} ({model.num_parameters():,} parameters) on {config['dataset']}: "
        f"{len(x_train):,} training and {val} images, {_ranks_text(threads)}",
        f"{config['optimizer']} lr {config['lr']:g}"
        + (f" momentum {config['momentum']:g}" if config["optimizer"] == "sgd" else "")
        + (f" weight decay {config['weight_decay']:g}" if config["weight_decay"] else "")
        + f", schedule {config['schedule']}"
        + (f" every {config['step_size']} epochs" if config["schedule"] == "step" else "")
        + f", batch size {config['batch_size']}, {config['epochs']} epochs of {steps_per_epoch} batches"
        + (f", augmentation {augment}" if augment else "")
        + (f", {adversarial}" if adversarial else ""),
        f"data: {dataset.source}; test split: {dataset.test_split}"
        + (f"; {len(dataset.skipped)} unreadable image{'s' if len(dataset.skipped) > 1 else ''} left out "
           f"(first: {dataset.skipped[0]})" if dataset.skipped else ""),
        f"run folder: {run.folder}",
    )
    val_args = (x_val, y_val) if len(x_val) else (None, None)
    trainer.fit(x_train, y_train, config["epochs"], *val_args, resume=resume)
    return trainer, dataset, (x_val, y_val)


def _readable_checkpoint(path):
    """The epoch a checkpoint was taken after, or None if it cannot be read."""
    from fastconv.train.trainer import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)["epoch"]
    except (CheckpointError, KeyError, TypeError):
        return None


def _check_last_checkpoint(run):
    """CheckpointError if the last checkpoint is unreadable, offering the best
    checkpoint when that one can be read."""
    from fastconv.train.trainer import CheckpointError, load_checkpoint

    try:
        load_checkpoint(run.checkpoint("last"))
    except CheckpointError as exc:
        best = run.checkpoint("best")
        epoch = _readable_checkpoint(best) if best.exists() else None
        if epoch is None:
            raise
        raise CheckpointError(f"{exc}; {best.name} (after epoch {epoch}) is readable: resume from it with "
                              f"fastconv train --out {run.folder} --resume --from best") from None


def _resume_from_best(run):
    """Make the best checkpoint the one --resume continues from; the last one,
    readable or not, is kept beside it as checkpoint-last.set-aside.npz."""
    from fastconv._files import atomic_write
    from fastconv.train.trainer import load_checkpoint

    best, last = run.checkpoint("best"), run.checkpoint("last")
    if not best.exists():
        raise UsageError(f"{run.folder} has no {best.name} to resume from")
    epoch = load_checkpoint(best)["epoch"]
    if last.exists():
        os.replace(last, last.with_name("checkpoint-last.set-aside.npz"))
    atomic_write(last, lambda f: f.write(best.read_bytes()))
    print_lines(f"resuming from {best.name} (after epoch {epoch}); the previous last checkpoint, if any, "
                f"is kept as checkpoint-last.set-aside.npz")


def cmd_train(args):
    from fastconv.train.distributed import abort_on_error, world

    comm = world()
    with abort_on_error(comm, "train"):
        return _cmd_train(args, comm)


def _cmd_train(args, comm):
    if args.resume and args.force:
        raise UsageError("--force replaces a run and --resume continues it: give one of them")
    if args.resume_from is not None and not args.resume:
        raise UsageError("--from says which checkpoint --resume continues from: give --resume too")
    run = RunDir(args.out)
    config, recipe = _merge_config(args, run)
    if not args.resume:
        if comm.is_root:
            claim_folder(run, args.force)
        comm.barrier()
    if args.resume:
        stored = run.require_config()
        data_dir = run.data_dir(args.data_dir)
        threads = args.threads if args.threads is not None else stored.get("threads")
        if args.threads is None and stored.get("ranks", 1) != comm.size:
            threads = None  # the stored count was for another number of ranks per node
    else:
        data_dir, threads = args.data_dir, args.threads
    resume = args.resume
    if resume and args.resume_from == "best" and comm.is_root:
        _resume_from_best(run)
    elif resume and run.checkpoint("last").exists():
        _check_last_checkpoint(run)
    comm.barrier()
    if resume and not run.checkpoint("last").exists():
        # Stopped before its first checkpoint: nothing to continue from, so the
        # run starts over with its stored options, replacing only its own files.
        print_lines(f"{run.folder} has no checkpoint yet: starting it again from the beginning")
        comm.barrier()
        if comm.is_root:
            run.remove_run_files()
        resume = False
    elif resume and args.epochs is not None and comm.is_root:
        run.write_config({**run.require_config(), "epochs": config["epochs"]})
        if recipe is not None:
            run.write_recipe(recipe.to_dict())
    comm.barrier()
    trainer, _, _ = train_run(config, run.folder, data_dir, threads, resume=resume, recipe=recipe)
    best = trainer.best
    print_lines(
        f"done: {trainer.epoch} epochs; best {best['metric'].replace('_', ' ')} {best['value']:.4f} "
        f"at epoch {best['epoch']}",
        f"model: {run.model_path}  history: {run.history_path('csv')}  "
        f"curves: {run.figure('history')}",
        f"evaluate with: fastconv evaluate {run.folder}",
    )
    return 0


# ------------------------------------------------------------------ parser


def add_parsers(commands):
    """Add ``train`` to fastconv's argparse sub-commands."""
    train = commands.add_parser(
        "train", help="train a model and save it with its history, checkpoints and figures",
        description=f"Train a model on a data set. Writes {CONFIG}, {HISTORY_JSON}/{Path(HISTORY_CSV).suffix}, "
                    f"{LAST_CHECKPOINT}, {BEST_CHECKPOINT}, {FINAL_MODEL}, {BEST_MODEL}, "
                    f"{FIGURES['samples']} and {FIGURES['history']} (and {RECIPE} with --recipe) to the --out "
                    "folder. "
                    "Ctrl-C stops after the current batch and saves a checkpoint; "
                    "'fastconv train --out RUN_DIR --resume' continues from it.",
    )
    train.add_argument("--dataset", help="mnist, mnist-sample, fashion-mnist, cifar10 or folder:PATH "
                                         "(PATH/<class>/<image>, or a .tar.gz of such a folder)")
    train.add_argument("--recipe", metavar="NAME|FILE",
                       help="train with a recipe: airbench94 (the airbench method: whitened first layer, "
                            "Nesterov SGD, Lookahead, alternating flips, test-time augmentation) or cifar6, "
                            "or a .json file of one; any option given as well overrides it")
    train.add_argument("--model", choices=sorted(MODELS),
                       help="network: mnist2 (28x28 images), mnist2-bn (mnist2 with batch norm after each "
                            "convolution's ReLU), cifar6, airbench94 or the CIFAR ResNets resnet20/32/44/56 "
                            "(32x32), or the ImageNet networks resnet18/34/50 and mobilenet_v2 (224x224); "
                            "default: the one that fits")
    train.add_argument("--init", choices=("he", "torch"),
                       help="initialization: he (Kaiming normal for layers followed by a ReLU, the default) "
                            "or torch (PyTorch's layer defaults, as a PyTorch script without explicit "
                            "initialization)")
    train.add_argument("--epochs", type=_positive_int, help=f"epochs (default {TRAIN_DEFAULTS['epochs']})")
    train.add_argument("--batch-size", type=_positive_int,
                       help=f"mini-batch size (default {TRAIN_DEFAULTS['batch_size']})")
    train.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default adam)")
    train.add_argument("--lr", type=_non_negative_float,
                       help="learning rate (default 0.01 for sgd, 0.001 for adam and adamw); "
                            "the peak rate for --schedule onecycle")
    train.add_argument("--momentum", type=_non_negative_float, help="SGD momentum (default 0)")
    train.add_argument("--weight-decay", type=_non_negative_float,
                       help="weight decay (default 0; 0.01 for adamw)")
    train.add_argument("--schedule", choices=SCHEDULES,
                       help="learning-rate schedule: step (x0.1 every --step-size epochs), cosine "
                            "(to 0 over the epochs), onecycle (per batch), piecewise (a recipe's, per batch) "
                            "or none (default)")
    train.add_argument("--label-smoothing", type=_unit_interval, metavar="EPS",
                       help="with --recipe: label smoothing of the cross-entropy loss (airbench94: 0.2)")
    train.add_argument("--tta", choices=TTA_MODES,
                       help="with --recipe: the test-time augmentation 'fastconv evaluate' applies "
                            "(airbench94: flip-translate)")
    train.add_argument("--step-size", type=_positive_int,
                       help="epochs between steps of --schedule step (default a third of the epochs)")
    train.add_argument("--augment", action="store_const", const=True,
                       help="random crops (zero padding 4, or 2 for 28x28 images) and, except for MNIST, "
                            "horizontal flips")
    train.add_argument("--val-fraction", type=_fraction,
                       help="stratified part of the training split held out for validation (default 0.1)")
    train.add_argument("--test-fraction", type=_fraction,
                       help="folder: data sets: the last part of each class held out as the test split "
                            "(default 0.1); 0 trains on every image, with --val-fraction 0 too")
    train.add_argument("--seed", type=_non_negative_int,
                       help="seed of the initialization, split, shuffling and augmentation (default 0)")
    train.add_argument("--limit", type=_positive_int,
                       help="use only N training and N test images, a fixed random subset (quick trials)")
    train.add_argument("--image-size", type=_image_side, metavar="N",
                       help="folder: data sets: bring every image to N x N (shorter side resized to N, "
                            "then the centre cut out), e.g. the model's input side")
    train.add_argument("--skip-bad-images", action="store_const", const=True,
                       help="folder: data sets: leave out the files that are not readable images (they are "
                            "counted) instead of stopping with the list of them")
    train.add_argument("--threads", type=_positive_int,
                       help="threads for the kernels and BLAS (default all cores; results are "
                            "reproducible for a given seed and thread count)")
    train.add_argument("--sync-bn", action="store_const", const=True,
                       help="under mpiexec: batch norm with the statistics of the whole global batch, summed "
                            "over the ranks (default: each rank's own images' statistics, as PyTorch DDP)")
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for everything the run writes")
    train.add_argument("--data-dir", metavar="DIR",
                       help="folder holding the data sets (default $FASTCONV_DATA or ~/.cache/fastconv, "
                            "then system locations); missing files are downloaded there")
    train.add_argument("--adversarial", choices=("fgsm", "pgd"),
                       help="adversarial training: half of every batch is replaced by FGSM or PGD "
                            "(random start) adversarial examples of its images; needs --adv-eps")
    train.add_argument("--adv-eps", type=_non_negative_float, metavar="EPS",
                       help="L-infinity size of the adversarial training perturbations, in pixels "
                            "scaled to [0, 1] (e.g. 0.3 for MNIST, 0.03 for CIFAR-10)")
    train.add_argument("--adv-steps", type=_positive_int, metavar="N",
                       help="steps of the PGD attack of --adversarial pgd (default 7; fewer is "
                            "cheaper: each step is a forward and backward pass of half the batch)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in RUN_DIR from its last checkpoint, with its stored options")
    train.add_argument("--from", dest="resume_from", choices=("last", "best"),
                       help="with --resume: the checkpoint to continue from, the last (default) or the one of "
                            "the best validation epoch (when the last cannot be read)")
    add_force_option(train, "RUN_DIR")
    train.set_defaults(handler=cmd_train)
    return train
