"""Adversarial examples: the attacks, robustness measurements and defenses,
the linear-classifier experiments, and their figures."""
from fastconv.analysis.attacks.autoattack import (
    APGD,
    APGDDLR,
    APGDT,
    FAB,
    AutoAttack,
    Square,
    apgd_checkpoints,
    dlr_loss,
    linf_boundary_step,
    targeted_dlr_loss,
)
from fastconv.analysis.attacks.detect import FeatureSqueezing, detection_roc
from fastconv.analysis.attacks.eot import EOT, Transformations, survival
from fastconv.analysis.attacks.figures import (
    plot_adversarial,
    plot_autoattack,
    plot_detection_roc,
    plot_fooling_images,
    plot_loss_history,
    plot_perturbation_transfer,
    plot_robustness,
    plot_substitute,
    plot_survival,
    plot_templates,
)
from fastconv.analysis.attacks.generation import LookAlike, perturbation_transfer
from fastconv.analysis.attacks.linear import add_template, linear_classifier, template_flip, templates, train_linear
from fastconv.analysis.attacks.methods import (
    ATTACKS,
    BIM,
    FGSM,
    MIFGSM,
    PGD,
    PGDL2,
    Attack,
    CarliniWagnerL2,
    DeepFool,
    IterativeTargeted,
    make_attack,
)
from fastconv.analysis.attacks.robustness import (
    AdversarialTraining,
    attack_report,
    defensive_distillation,
    evaluate_attack,
    jacobian_augmentation,
    robustness_curve,
    train_substitute,
    transfer,
)
from fastconv.analysis.attacks.universal import UniversalPerturbation, fooling_rate, universal_perturbation

__all__ = [
    "Attack", "FGSM", "BIM", "PGD", "PGDL2", "MIFGSM", "IterativeTargeted", "DeepFool", "CarliniWagnerL2",
    "ATTACKS", "make_attack",
    "APGD", "APGDDLR", "APGDT", "FAB", "Square", "AutoAttack", "apgd_checkpoints", "dlr_loss",
    "targeted_dlr_loss", "linf_boundary_step", "UniversalPerturbation", "universal_perturbation", "fooling_rate",
    "AdversarialTraining", "attack_report", "evaluate_attack", "robustness_curve", "transfer",
    "defensive_distillation", "train_substitute", "jacobian_augmentation",
    "linear_classifier", "train_linear", "templates", "add_template", "template_flip",
    "plot_adversarial", "plot_autoattack", "plot_fooling_images", "plot_robustness", "plot_templates",
    "LookAlike", "perturbation_transfer", "FeatureSqueezing", "detection_roc", "EOT", "Transformations", "survival",
    "plot_loss_history", "plot_perturbation_transfer", "plot_detection_roc", "plot_survival", "plot_substitute",
]
