"""``SeqVCRTrainer``: a ``Trainer`` that adds the Seq-VCR regulariser to the LM loss.

The hidden states of the chosen blocks are captured with forward hooks (nothing else is materialised),
projected by a linear head per layer (``seq_vcr_projection_dim``, 2048 in the paper; ``None`` = no head)
and regularised with :func:`hf_growth.training.seq_vcr.seq_vcr_terms`. The head is trained with the model
(it is added to the optimizer) but it is not part of the model: ``save_model`` never writes it. Each checkpoint
directory gets ``seq_vcr_projection.safetensors``, which ``train(resume_from_checkpoint=...)`` restores.

Logged next to ``loss`` (in ``state.log_history`` and every ``report_to`` backend): ``ce_loss`` (the model's
loss), ``seq_vcr_variance`` and ``seq_vcr_covariance`` (the weighted terms), each the mean over the optimizer steps
since the last log; ``loss`` is their sum. They are summed on the device and read on the host only when logging:
a training step adds no host synchronisation.

Speed: the head and the statistics run in the model's mixed precision (``bf16``/``fp16``: the head's matmul in low
precision; the statistics themselves are always float32) and, with ``torch_compile``, are compiled together (same
backend and mode as the model; ``seq_vcr_compile`` overrides), so the regulariser is a few fused kernels in the same
step as the model's forward.

Loss scaling: when the model normalises its loss by ``num_items_in_batch`` (transformers 5 semantics, the
count taken over all micro-batches of an optimizer step and, with ``average_tokens_across_devices``, all
ranks), the Seq-VCR term (a per-micro-batch mean) is divided by the number of micro-batches of the step, so
the gradient is the mean over micro-batches; otherwise the Trainer's own division does it. Under DDP each rank
takes its statistics over its own micro-batch and DDP's gradient averaging gives the mean over ranks; the
projection head's gradients (outside the DDP module) are all-reduced before every optimizer step.

>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> from hf_growth.training import SeqVCRConfig, SeqVCRTrainer
>>> model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
>>> args = SeqVCRConfig(output_dir="/tmp/out", max_steps=2, report_to=[], use_cpu=True,
...                     seq_vcr_projection_dim=64)   # doctest: +SKIP
>>> trainer = SeqVCRTrainer(model=model, args=args, train_dataset=...)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..growth.in_place import resize_parameter
from .seq_vcr import _seq_vcr_parts
from .seq_vcr_config import SeqVCRConfig, _parse_layers

__all__ = ["SeqVCRTrainer", "PROJECTION_FILE", "find_decoder_layers"]

logger = logging.getLogger(__name__)

PROJECTION_FILE = "seq_vcr_projection.safetensors"


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``ModuleList`` of decoder blocks of a causal LM (GPT-2 ``transformer.h``, Llama ``model.layers``,
    peft-wrapped or not): the list whose length is ``config.num_hidden_layers``, else the longest one."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None) if config is not None else None
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no ModuleList of decoder blocks to take hidden states from")
    exact = [(name, m) for name, m in candidates if n is not None and len(m) == n]
    pool = exact or candidates
    pool.sort(key=lambda item: (not item[0].endswith(("layers", ".h", "h", "blocks")), -len(item[1])))
    return pool[0][1]


def _block_index(spec: str | int, num_blocks: int, current: int | None = None) -> int:
    """The block a capture spec hooks now: ``"embeddings"`` the first (its input), ``"last"`` and negative indices
    counted from the end, a block index where its block is (``current``, after growth) or the index itself."""
    if spec == "embeddings":
        return 0
    if spec == "last":
        return num_blocks - 1
    if spec < 0:
        return num_blocks + spec
    return spec if current is None else current


def _capture_name(spec: str | int, index: int) -> str:
    return "embeddings" if spec == "embeddings" else f"layer_{index}"


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) if config is not None else None
    if size is None:
        size = model.get_input_embeddings().embedding_dim
    return int(size)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. tensors of different shapes
        return False


def _default_group(optimizer: torch.optim.Optimizer, weight_decay: float) -> dict[str, Any] | None:
    """The first param group whose hyperparameters are the optimizer's defaults with ``weight_decay``: the group
    ``add_param_group({"params": ..., "weight_decay": weight_decay})`` would create; ``None`` if there is none."""
    defaults = getattr(optimizer, "defaults", None)
    if not isinstance(defaults, dict):
        return None
    for group in optimizer.param_groups:
        if not _same(group.get("weight_decay", defaults.get("weight_decay")), weight_decay):
            continue
        if all(
            _same(group.get(key), value) for key, value in defaults.items() if key not in ("params", "weight_decay")
        ):
            return group
    return None


@torch.no_grad()
def _clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) for a few parameters on one device, with fewer launches."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if len({(g.device, g.dtype) for g in grads}) > 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef)
    return total


class _SeqVCRCallback(TrainerCallback):
    """Counts optimizer steps for logging; syncs/clips the projection head's gradients before each optimizer
    step and clears them after it."""

    def __init__(self, trainer: SeqVCRTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._sync_projection_grads()

    def on_optimizer_step(self, args, state, control, **kwargs):
        # the Trainer zeroes only the model's gradients (`model.zero_grad()`); the head is outside the model
        for p in self.trainer.seq_vcr_projection.parameters():
            p.grad = None

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._vcr_steps += 1


class SeqVCRTrainer(Trainer):
    """``Trainer`` whose training loss is the model's loss plus Seq-VCR on the chosen blocks' outputs.

    Takes the ``Trainer`` arguments; the Seq-VCR settings come from ``args`` (a :class:`SeqVCRConfig`; a plain
    ``TrainingArguments`` gets the ``SeqVCRConfig`` defaults). Only the training loss is regularised:
    evaluation reports the model's loss alone.

    >>> trainer = SeqVCRTrainer(model=model, args=SeqVCRConfig(output_dir="out"), train_dataset=ds)  # doctest: +SKIP
    >>> trainer.train()                                                                              # doctest: +SKIP
    >>> [k for k in trainer.state.log_history[0] if "seq_vcr" in k or k == "ce_loss"]                 # doctest: +SKIP
    ['ce_loss', 'seq_vcr_variance', 'seq_vcr_covariance']
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defaults = SeqVCRConfig.__dataclass_fields__
        self._vcr_settings = {
            name: getattr(self.args, name, defaults[name].default)
            for name in (
                "use_seq_vcr",
                "seq_vcr_variance_weight",
                "seq_vcr_covariance_weight",
                "seq_vcr_eps",
                "seq_vcr_layers",
                "seq_vcr_projection_dim",
                "seq_vcr_statistics",
                "seq_vcr_compile",
            )
        }
        s = self._vcr_settings
        s["seq_vcr_layers"] = _parse_layers(s["seq_vcr_layers"])
        self._vcr_enabled = bool(s["use_seq_vcr"]) and (s["seq_vcr_variance_weight"] or s["seq_vcr_covariance_weight"])
        self._captured: dict[str, torch.Tensor] = {}
        self._capturing = False
        self._hooks: list[Any] = []
        self._vcr_sums: torch.Tensor | None = None
        self._vcr_steps = 0
        self._vcr_fn = None  # _project_and_measure, compiled with `torch_compile`; built at the first training step
        self.seq_vcr_projection = nn.ModuleDict()
        self._vcr_growth_seen = len(self._growth_history())  # growth_history records the heads have followed
        if not self._vcr_enabled:
            return
        blocks = find_decoder_layers(self.model)
        layers = s["seq_vcr_layers"]
        self._vcr_specs: list[str | int] = []  # "embeddings" | "last" | a block index, one per captured layer
        self._vcr_names: list[str] = []
        for spec in [layers] if layers in ("embeddings", "last") else list(layers):
            if isinstance(spec, int) and not -len(blocks) <= spec < len(blocks):
                raise ValueError(f"seq_vcr_layers index {spec} out of range for {len(blocks)} blocks")
            name = _capture_name(spec, _block_index(spec, len(blocks)))
            if name not in self._vcr_names:
                self._vcr_specs.append(spec)
                self._vcr_names.append(name)
        self._attach_hooks(blocks, [_block_index(spec, len(blocks)) for spec in self._vcr_specs])
        hidden = _hidden_size(self.model)
        dim = s["seq_vcr_projection_dim"]
        for name in self._vcr_names:
            self.seq_vcr_projection[name] = nn.Identity() if dim is None else nn.Linear(hidden, int(dim))
        self.seq_vcr_projection.to(self.args.device)
        self.add_callback(_SeqVCRCallback(self))

    # ---- hidden-state capture -------------------------------------------------------------------------
    def _pre_hook(self, name: str):
        def hook(module, args, kwargs):
            if self._capturing and name not in self._captured:
                self._captured[name] = args[0] if args else kwargs["hidden_states"]

        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
            if self._capturing and name not in self._captured:
                self._captured[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def remove_seq_vcr_hooks(self) -> None:
        """Detach the forward hooks from the model (e.g. before handing the model to other code)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _attach_hooks(self, blocks: nn.ModuleList, indices: list[int]) -> None:
        self.remove_seq_vcr_hooks()
        for name, index in zip(self._vcr_names, indices):
            if name == "embeddings":
                self._hooks.append(blocks[index].register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            else:
                self._hooks.append(blocks[index].register_forward_hook(self._post_hook(name)))

    # ---- growth during training -----------------------------------------------------------------------
    def _growth_history(self) -> list[dict[str, Any]]:
        return getattr(getattr(self.model, "config", None), "growth_history", None) or []

    def follow_model_growth(self) -> bool:
        """Bring the Seq-VCR hooks and projection heads in line with the growth the model went through since the
        last call (its ``config.growth_history``); ``True`` if it grew. Called before every training step, checkpoint
        save and head load, and by the growth callbacks right after they grow the model, so there is rarely a need
        to call it.

        - Width (``hidden_size``): each head's weight gets the model's new width in place (the same ``Parameter``,
          so the optimizer keeps it); the old input columns keep their values and Adam moments, the new columns
          start at zero. The new coordinates of a function-preserving hidden growth are zero (RMSNorm models) or
          copies of old ones whose first copy sits at the old place (LayerNorm cloning), so on the grown model the
          head's output, and with it the Seq-VCR terms, are exactly what they were. Without a head
          (``seq_vcr_projection_dim=None``) the terms are taken over the model's width and change with it.
        - Depth (``num_layers``, ``stack``): ``"last"`` (and negative indices) move to the new last block,
          ``"embeddings"`` to the new first block's input, a block index follows its block to its new position;
          the heads keep their weights and state and are renamed ``layer_<new index>``.
        """
        history = self._growth_history()
        if len(history) == self._vcr_growth_seen:
            return False
        new, self._vcr_growth_seen = history[self._vcr_growth_seen :], len(history)
        if not self._vcr_enabled:
            return True
        if self._hooks:  # (none after remove_seq_vcr_hooks)
            self._retarget_hooks()
        self._widen_heads(new)
        self._vcr_fn = None  # compiled for the old shapes
        return True

    def _retarget_hooks(self) -> None:
        blocks = find_decoder_layers(self.model)
        indices = []
        for spec, handle in zip(self._vcr_specs, self._hooks):
            held = handle.hooks_dict_ref()  # grow_in_place moved the hook with its block
            current = next(
                (i for i, block in enumerate(blocks) if held is not None and block._forward_hooks is held), None
            )
            indices.append(_block_index(spec, len(blocks), current))
        names = [_capture_name(spec, index) for spec, index in zip(self._vcr_specs, indices)]
        heads = dict(self.seq_vcr_projection.items())
        self.seq_vcr_projection = nn.ModuleDict({new_name: heads[old] for old, new_name in zip(self._vcr_names, names)})
        self._vcr_names = names
        self._attach_hooks(blocks, indices)

    def _widen_heads(self, records: list[dict[str, Any]]) -> None:
        linears = [head for head in self.seq_vcr_projection.values() if isinstance(head, nn.Linear)]
        if not linears:
            return
        embeddings = self.model.get_input_embeddings().weight
        embed_name = next((n for n, p in self.model.named_parameters() if p is embeddings), None)
        runs: list[list[dict[str, Any]]] = []
        for record in records:
            if runs and record.get("run") == runs[-1][0].get("run"):
                runs[-1].append(record)
            else:
                runs.append([record])
        for run in runs:
            width = (run[-1].get("after") or {}).get("hidden")
            slices = next((r["new_slices"] for r in reversed(run) if "new_slices" in r), {})
            columns = (slices.get(embed_name) or {}).get("1")
            for head in linears:
                if width and width != head.in_features:
                    resize_parameter(
                        head.weight,
                        (head.out_features, width),
                        {1: columns} if columns else None,
                        optimizer=self.optimizer,
                    )
                    head.in_features = width
        width = _hidden_size(self.model)
        for head in linears:  # records without sizes: the new columns after the old ones
            if head.in_features != width:
                resize_parameter(head.weight, (head.out_features, width), optimizer=self.optimizer)
                head.in_features = width

    @torch.no_grad()
    def measure_seq_vcr(self, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """The weighted Seq-VCR terms of one batch in eval mode, without gradients:
        ``{"seq_vcr_variance": ..., "seq_vcr_covariance": ...}`` (e.g. to watch them across a growth step)."""
        if not self._vcr_enabled:
            raise ValueError("Seq-VCR is off (use_seq_vcr=False or both weights 0): there is nothing to measure")
        self.follow_model_growth()
        model = self.model
        was = model.training
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items() if k != "labels"}
        self._captured.clear()
        self._capturing = True
        model.eval()
        try:
            model(**inputs)
        finally:
            self._capturing = False
            model.train(was)
        hiddens = [self._captured.pop(name) for name in self._vcr_names]
        variance, covariance = self._project_and_measure(hiddens, inputs.get("attention_mask")).tolist()
        return {"seq_vcr_variance": variance, "seq_vcr_covariance": covariance}

    # ---- loss -----------------------------------------------------------------------------------------
    def _ce_is_scaled_for_ga(self, num_items_in_batch) -> bool:
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is not None:
            return bool(scaled)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or getattr(self, "compute_loss_func", None) is not None
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._vcr_enabled and len(self._growth_history()) != self._vcr_growth_seen:
            self.follow_model_growth()  # grown since the last step (the callbacks usually did this already)
        if not (self._vcr_enabled and model.training and self._hooks):
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        mask = inputs.get("attention_mask")
        self._captured.clear()
        self._capturing = True
        try:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        finally:
            self._capturing = False
        missing = [n for n in self._vcr_names if n not in self._captured]
        if missing:
            raise RuntimeError(f"Seq-VCR hooks did not fire for {missing}: was the model's forward bypassed?")
        hiddens = [self._captured[name] for name in self._vcr_names]
        self._captured.clear()
        if self._vcr_fn is None:
            compile_vcr = self._vcr_settings["seq_vcr_compile"]
            if compile_vcr is None:
                compile_vcr = self.args.torch_compile
            self._vcr_fn = self._project_and_measure
            if compile_vcr:
                self._vcr_fn = torch.compile(
                    self._project_and_measure,
                    backend=self.args.torch_compile_backend or "inductor",
                    mode=self.args.torch_compile_mode,
                )
        with self.accelerator.autocast():  # the model's own mixed precision (accelerate applies it to its forward)
            parts = self._vcr_fn(hiddens, mask)  # [variance, covariance], one differentiable float32 (2,) tensor
        micro = max(
            1, int(getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps)
        )
        scaled = self._ce_is_scaled_for_ga(num_items_in_batch)
        aux = parts.sum()  # variance + covariance
        if scaled and micro > 1:
            aux = aux / micro
        total = loss + aux.to(loss.dtype)
        # what each part contributes to the logged `loss` (the Trainer divides by `micro` when not scaled)
        sums = self._vcr_sums
        if sums is None:
            sums = self._vcr_sums = torch.zeros(3, dtype=torch.float32, device=loss.device)
        sums[0].add_(loss.detach().to(sums.device), alpha=1.0 if scaled else 1.0 / micro)
        sums[1:].add_(parts.detach().to(sums.device), alpha=1.0 / micro)
        return (total, outputs) if return_outputs else total

    def _project_and_measure(self, hiddens: list[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        """``[variance, covariance]`` of the captured hidden states through their heads, averaged over layers."""
        s = self._vcr_settings
        parts = None
        for name, hidden in zip(self._vcr_names, hiddens):
            head = self.seq_vcr_projection[name]
            weight = getattr(head, "weight", None)
            if weight is not None and not torch.is_autocast_enabled(hidden.device.type):
                hidden = hidden.to(weight.dtype)
            layer = _seq_vcr_parts(
                head(hidden),
                mask,
                s["seq_vcr_variance_weight"],
                s["seq_vcr_covariance_weight"],
                s["seq_vcr_eps"],
                s["seq_vcr_statistics"],
            )
            parts = layer if parts is None else parts + layer
        return parts / len(hiddens) if len(hiddens) > 1 else parts

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._vcr_enabled and self._vcr_sums is not None:
            sums = self._vcr_sums
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums.to(self.args.device), reduction="mean")
            steps = max(1, self._vcr_steps)
            ce, var, cov = (sums / steps).tolist()
            logs["ce_loss"] = ce
            logs["seq_vcr_variance"] = var
            logs["seq_vcr_covariance"] = cov
            self._vcr_sums = None
            self._vcr_steps = 0
        super().log(logs, *args, **kwargs)

    # ---- projection head: optimizer, gradients, checkpoints -------------------------------------------
    def create_optimizer(self, *args: Any, **kwargs: Any):
        optimizer = super().create_optimizer(*args, **kwargs)
        params = [p for p in self.seq_vcr_projection.parameters() if p.requires_grad]
        if params:
            present = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
            new = [p for p in params if id(p) not in present]
            unmatched: dict[float, list[nn.Parameter]] = {}
            for p in new:
                wd = self.args.weight_decay if p.dim() > 1 else 0.0
                group = _default_group(self.optimizer, wd)
                if group is not None:
                    # an existing group with exactly the hyperparameters a new group would get: joining it instead
                    # of adding groups saves the per-group work of every optimizer step (fused AdamW: a launch each)
                    group["params"].append(p)
                else:
                    unmatched.setdefault(wd, []).append(p)
            for wd, group_params in unmatched.items():
                self.optimizer.add_param_group({"params": group_params, "weight_decay": wd})
        return optimizer if optimizer is not None else self.optimizer

    def _sync_projection_grads(self) -> None:
        params = [p for p in self.seq_vcr_projection.parameters() if p.requires_grad]
        if not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
            offset = 0
            for p in params:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            _clip_grad_norm(params, self.args.max_grad_norm)

    def save_projection_head(self, directory: str) -> str:
        """Write the projection head to ``directory/seq_vcr_projection.safetensors`` and return the path."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, PROJECTION_FILE)
        state = {k: v.detach().contiguous().cpu() for k, v in self.seq_vcr_projection.state_dict().items()}
        meta = {
            "layers": ",".join(self._vcr_names) if self._vcr_enabled else "",
            "projection_dim": str(self._vcr_settings["seq_vcr_projection_dim"]),
        }
        save_file(state, path, metadata=meta)
        return path

    def load_projection_head(self, directory: str) -> bool:
        """Load the head saved by :meth:`save_projection_head` (in place); ``False`` if there is no file."""
        path = os.path.join(directory, PROJECTION_FILE)
        if not os.path.isfile(path):
            return False
        from safetensors.torch import load_file

        self.follow_model_growth()  # a resumed model was grown to the checkpoint's size: so is the head

        state = load_file(path, device="cpu")
        self.seq_vcr_projection.load_state_dict(state)
        return True

    def _save_checkpoint(self, model, trial, *args: Any, **kwargs: Any) -> None:
        self.follow_model_growth()  # the optimizer state and the head saved at the model's size
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if self._vcr_enabled and len(self.seq_vcr_projection) and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            run_dir = self._get_output_dir(trial=trial)
            self.save_projection_head(os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))

    def _load_optimizer_and_scheduler(self, checkpoint, *args: Any, **kwargs: Any) -> None:
        if checkpoint is not None and self._vcr_enabled and len(self.seq_vcr_projection):
            if not self.load_projection_head(checkpoint):
                logger.warning("no %s in %s: the Seq-VCR projection head starts fresh", PROJECTION_FILE, checkpoint)
        super()._load_optimizer_and_scheduler(checkpoint, *args, **kwargs)
