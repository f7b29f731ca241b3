"""The seed paper's loss-landscape experiments: numbers first, figures drawn from them.

Each experiment returns a :class:`Result` (JSON ``meta`` + NumPy ``arrays``; ``save``
writes ``STEM.json``/``STEM.npz``) and has a figure function in :mod:`.plots`:

=========================  ==============================  =============================
experiment                 function                        figure
=========================  ==============================  =============================
loss along FGSM/PGD        :func:`loss_along_direction`    :func:`plot_direction`
restart concentration      :func:`restart_losses`          :func:`plot_restarts`,
                                                           :func:`plot_traces`
plane through two maxima   :func:`loss_surface`            :func:`plot_surface`
training curves            :func:`training_curves`         :func:`plot_curves`
FGSM- vs PGD-trained       :func:`fgsm_vs_pgd`             :func:`plot_fgsm_vs_pgd`
=========================  ==============================  =============================

All of them take any ``nn.Module`` on [0, 1] inputs (run in eval mode, the caller's
mode restored) and a threat model; only ``training_curves`` reads run directories.
"""

from .common import Result, angle_degrees
from .curves import training_curves
from .direction import loss_along_direction
from .fgsm_vs_pgd import fgsm_vs_pgd, format_table
from .plots import (
    plot_curves,
    plot_direction,
    plot_fgsm_vs_pgd,
    plot_restarts,
    plot_surface,
    plot_traces,
)
from .restarts import restart_losses
from .surface import chord_gap, loss_surface, plane_points

__all__ = ["Result", "angle_degrees", "chord_gap", "fgsm_vs_pgd", "format_table",
           "loss_along_direction", "loss_surface", "plane_points", "plot_curves",
           "plot_direction", "plot_fgsm_vs_pgd", "plot_restarts", "plot_surface",
           "plot_traces", "restart_losses", "training_curves"]
