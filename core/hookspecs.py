"""The plugin contract: every hook a domain can implement, in one file.

A domain is a module (or an instance) whose functions are marked with ``@hookimpl`` and named
after the specifications below. It is found through the ``coarse2fine.domains`` entry-point group
(the entry-point name is the domain name) or registered directly with
``core.plugins.register_domain(name, module)``. Each hook is called only on the chosen domain's
plugin; a hook that returns ``None`` (or is left out) keeps the core's default.
``docs/examples/c2f-signals`` is a complete plugin package to copy.

Required, and when:

* ``c2f_load_data``: always.
* ``c2f_scale_ops`` **or** ``c2f_model``: to train or sample (the core builds the model from the
  first, or takes the second whole).
* ``c2f_evaluate``: for ``task=evaluate`` and ``task=all`` (train, sample, evaluate).
* ``c2f_config_dir``: for a plugin outside this repository, whose ``domain/<name>.yaml`` hydra
  must find (``domain=<name>``).
* ``c2f_collate``: when ``c2f_load_data`` returns something other than ``core.data.TensorData``.
* ``c2f_sample_conditions``: when the conditions to sample for are not class labels.

There are two ways to plug a domain into the coarse-to-fine machinery:

1. **Tensor support** (images, sphere grids, 1-D signals, any array). Implement
   ``c2f_scale_ops`` (``core.protocol.ScaleOps``: ``sizes``, ``down``, ``up``, ``positions``).
   The core then builds the residual pyramid (``core.pyramid``), the quantiser
   (``core.quantizers``; ``model.quant_lo``/``quant_hi`` bound the scalar quantiser's range and
   must cover the band values: the coarsest scale's means and the finer residuals), the target
   head (``core.targets``) and the scale transformer (``core.refiner``) from the config.
   Optional: ``c2f_tokenizer`` (``core.protocol.Tokenizer``) to refine in a learned latent space,
   ``c2f_refiner`` (``core.protocol.Refiner``) for another backbone.
2. **Structural support** (graphs). Implement ``c2f_model`` and return an ``nn.Module`` with the
   scale-model protocol of ``core.protocol`` (``ScaleModelProtocol``: ``num_scales``,
   ``num_classes``, ``null_label``, ``loss``, ``init_state``, ``predict``, ``add_band``,
   ``finish``; optional capabilities such as ``band_ok`` or ``repredict`` are protocols of their
   own there). The core pipeline, trainer and CLI drive it exactly as they drive the built-in
   model.

**The samples dict** that ``c2f_save_samples``, ``c2f_load_samples``, ``c2f_evaluate`` and
``c2f_visualize`` exchange: ``{"samples": ..., "cond": ...}``. ``samples`` is what the model's
``finish`` returns, stacked: a float tensor [N, *item] (tensor domains, on the CPU, fp32) or a
list of N items (graphs); ``cond`` is the [N] tensor of conditions they were drawn for (class
labels; ``null_label`` when unconditional), or ``None`` in a user's file of unconditional samples.

Every hook receives the composed hydra config ``cfg`` (an ``omegaconf.DictConfig``); domain
settings live under ``cfg.domain``. The core moves models and batches to the run's device
(``core.device``); hooks build their data on the CPU.
"""
from __future__ import annotations

import pluggy

PROJECT = "coarse2fine"
ENTRY_POINT_GROUP = "coarse2fine.domains"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def c2f_config_dir():
    """Folder holding ``domain/<name>.yaml`` for a domain that lives outside this repository.

    It is added to hydra's search path so that ``domain=<name>`` composes. Built-in domains keep
    their yaml in ``configs/domain`` and need not implement this.
    """


@hookspec(firstresult=True)
def c2f_load_data(cfg, split):
    """Required. Return the data of one split (``"train"``, ``"val"``, ``"test"``).

    Tensor domains return a ``core.data.TensorData`` (``x`` [N, C, *support] float tensor and
    ``cond`` [N] long class labels, or ``None`` when unconditional). Structural domains return
    whatever their ``c2f_model`` consumes. A missing file raises an error naming the path.
    """


@hookspec(firstresult=True)
def c2f_condition(cfg):
    """Describe the conditioning of the model the core builds. Either class labels,
    ``{"num_classes": int}`` (0 = unconditional; labels are integers in ``[0, num_classes)``, and
    the core reserves ``num_classes`` as the null label used for classifier-free guidance), or a
    field on the support, ``{"field_channels": int, "stencil": bool}``: the condition of each
    item is then a tensor [C_cond, *support] (the second element of the ``c2f_collate`` batch and
    of ``c2f_sample_conditions``), restricted to every scale with ``down`` and read by each token
    of that scale (``core.model.FieldScaleModel``; ``stencil`` also feeds the differences to the 8
    neighbours, for scale ops with ``neighbours(k)``). Default: unconditional.
    """


@hookspec(firstresult=True)
def c2f_scale_ops(cfg, data):
    """Return the support of each scale and the operators between scales (required unless
    ``c2f_model`` returns the whole model). ``data`` is the train split, for supports that depend
    on it (a store's grid); most domains take only ``cfg``.

    A ``core.protocol.ScaleOps``: ``sizes`` (list of support shapes, coarse to fine: ``(h, w)``
    on a grid, ``(n,)`` in 1-D), ``down(z, k)`` (restrict a finer tensor [B, C, *support] to
    scale k), ``up(z, k)`` (prolong a coarser tensor to scale k) and ``positions(k)`` ([n_k, P]
    coordinates in [0, 1] used for position encodings). ``core.grid.GridOps`` is the 2-D
    reference implementation.
    """


@hookspec(firstresult=True)
def c2f_tokenizer(cfg):
    """Return a ``core.protocol.Tokenizer`` (``encode(x) -> z``, ``decode(z) -> x``,
    ``channels``, optionally ``quantizer``) to refine in a learned latent space, or ``None`` to
    refine in data space."""


@hookspec(firstresult=True)
def c2f_refiner(cfg, in_channels, num_scales, num_classes):
    """Return a backbone (``core.protocol.Refiner``, the interface of
    ``core.refiner.ScaleTransformer``) to replace it, or ``None`` for the core transformer."""


@hookspec(firstresult=True)
def c2f_model(cfg, data):
    """Return a complete scale model (structural domains), or ``None`` to let the core build one
    from ``c2f_scale_ops`` / ``c2f_tokenizer`` / ``c2f_refiner``. ``data`` is the train split."""


@hookspec(firstresult=True)
def c2f_collate(cfg, data, indices):
    """Return the training batch made of the items ``indices`` (a long tensor) of ``data``.

    Default: ``(data.x[indices], data.cond[indices])`` for ``TensorData``.
    """


@hookspec(firstresult=True)
def c2f_sample_conditions(cfg, data, num_samples):
    """Return the conditions to sample for (a tensor of length ``num_samples``), or ``None``
    for the default: class labels cycling through ``range(num_classes)``."""


@hookspec(firstresult=True)
def c2f_save_samples(cfg, samples, run_dir):
    """Write the samples dict (module docstring) into ``run_dir`` and return the path written
    (default: ``samples.pt`` holding the dict)."""


@hookspec(firstresult=True)
def c2f_load_samples(cfg, path):
    """Read samples written by ``c2f_save_samples`` (or a user's file in the same layout)."""


@hookspec(firstresult=True)
def c2f_evaluate(cfg, samples, run_dir):
    """Score the samples dict (module docstring); return a flat ``dict[str, float]`` that goes
    into metrics.json. Needed by ``task=evaluate`` and ``task=all``."""


@hookspec(firstresult=True)
def c2f_visualize(cfg, samples, path):
    """Draw samples into the picture ``path`` (PNG)."""


@hookspec(firstresult=True)
def c2f_free_settings(cfg):
    """Names of this domain's settings (relative to ``domain.``, e.g. ``["eval_split"]``) that
    only change sampling or scoring, never training: a resumed run may change them, and a
    sample/evaluate run may set them differently from its checkpoint. All other domain settings
    are taken from the checkpoint (``core.records``). Default: none."""


@hookspec(firstresult=True)
def c2f_run_task(cfg, task, run_dir):
    """Run a task the core does not know (``forecast``, ``train_tokenizer``, ``benchmark``…)
    and return its metrics dict, or ``None`` if this domain does not provide ``task``.

    It is asked first for every task, core ones included: returning a dict for ``train``,
    ``sample`` or ``evaluate`` replaces the core's step (``task=all`` runs the three in turn, so
    a forecasting domain makes ``sample`` its forecast and ``evaluate`` its scoring)."""
