"""Export the predictor to ONNX, for hosts that serve it with Triton's onnxruntime or TensorRT backend
(no Python in the serving path). Two graphs, both with the pool in their metadata:

- `static`: the static predictor end to end,
      TOKEN_IDS (n_tokens,) int64, OFFSETS (batch + 1,) int64, LOG_LEN (batch,) fp32
      -> QUALITY, EXPECTED_COST_USD (batch, n_models) fp32.
  Tokenization stays outside (it is a tokenizers call, not tensor math): prompt b's ids are
  `StaticEncoder.tokenize` 's, i.e. the table's tokenizer without special tokens, cut to the window (the
  first `max_tokens`, or with `tail_tokens` > 0 the first max_tokens - tail_tokens and the last
  tail_tokens; both in the graph's metadata), [UNK] dropped, laid end to end with OFFSETS[b]:OFFSETS[b + 1] marking prompt b. LOG_LEN is
  log1p(number of characters) (`head.log_lengths`).
  An artifact's lexical part (predictor_service/lexical.py) is inside this graph, bigram hashing included,
  with the same three inputs (predictor_service/onnx_lexical.py). Why the hash is in the graph: it is ~20
  int64 elementwise ops on the ids already there, where taking it outside (FEATURE_IDS, FEATURE_OFFSETS
  inputs) would make every client reimplement kernels/lexical_logits.bigram_bucket bit for bit and send
  2n - 1 ids per prompt instead of n. torch.onnx (2.13, TorchScript) refuses integer xor at every opset and
  ONNX's BitShift takes unsigned ints only, so bigram_bucket_exportable writes xor and shift as exact int64
  arithmetic plus BitwiseAnd: such graphs are opset 18 (onnxruntime 1.32 runs them, tested), graphs without
  a part stay opset 17 and export byte for byte as before. TensorRT narrows INT64 to INT32 (the hash's
  products need 63 bits), so under onnxruntime's TensorRT provider those nodes would fall to the CUDA or CPU
  provider (not tried here: no TensorRT on these machines).
- `head`: the scoring head alone (any encoder; what `minilm` needs, with the encoder run elsewhere),
      PROMPT_EMBEDDING (batch, dim) fp32, LOG_LEN (batch,) fp32 -> QUALITY, EXPECTED_COST_USD.
  It sees no tokens, so it refuses an artifact with a lexical part (scores without it would be wrong).

`write_triton_repository` lays both out as Triton models (config.pbtxt with KIND_GPU); docs/serving.md shows
the container command.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from kernels.scoring_head import scoring_head_reference
from kernels.static_embed import NORM_EPS
from predictor_service.artifact import Artifact
from predictor_service.contract import EXPECTED_COST_USD, OUTPUTS, POOL_LABELS_FILE, QUALITY, pool_parameters
from predictor_service.onnx_lexical import LEXICAL_OPSET, LexicalGraph

OPSET = 17   # onnxruntime >= 1.14 and TensorRT 8.6+ read it; LEXICAL_OPSET (18) for a graph with a lexical part


class HeadGraph(nn.Module):
    """(prompt_embedding, log_len) -> (quality, expected_cost_usd): the kernels' eager reference."""

    def __init__(self, artifact: Artifact):
        super().__init__()
        for name, tensor in artifact.weights.as_dict().items():
            self.register_buffer(name, tensor.float().clone())
        self.inv_temperature = float(artifact.manifest.inv_temperature)

    def forward(self, prompt_embedding: torch.Tensor, log_len: torch.Tensor,
                quality_offset: torch.Tensor | None = None):
        return scoring_head_reference(prompt_embedding, self.w1, self.b1, self.quality_emb, self.quality_bias,
                                      self.cost_emb, self.cost_bias, self.cost_len_coef, log_len,
                                      self.inv_temperature, quality_offset)


class StaticPredictorGraph(nn.Module):
    """(token_ids, offsets, log_len) -> (quality, expected_cost_usd), the static predictor as one graph.

    The ragged mean is a (batch, n_tokens) 0/1 membership matrix times the gathered rows: it exports as
    plain Gather/MatMul (embedding_bag would become a Loop) and costs batch x n_tokens x dim, small next to
    the head at the batch sizes served (64 prompts x 256 tokens x 256 dims = 4 MFLOP).
    """

    def __init__(self, artifact: Artifact, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table.float().contiguous())  # (vocab, dim)
        self.head = HeadGraph(artifact)
        self.lexical = None if artifact.lexical is None else LexicalGraph(artifact.lexical)

    def forward(self, token_ids: torch.Tensor, offsets: torch.Tensor, log_len: torch.Tensor):
        positions = torch.arange(token_ids.shape[0], dtype=offsets.dtype)              # (n_tokens,)
        starts, ends = offsets[:-1], offsets[1:]                                        # (batch,)
        member = (positions[None, :] >= starts[:, None]) & (positions[None, :] < ends[:, None])
        summed = member.to(torch.float32) @ self.table[token_ids]                       # (batch, dim)
        mean = summed / (ends - starts).clamp(min=1).to(torch.float32)[:, None]         # empty prompt -> 0
        prompt_embedding = mean / torch.linalg.vector_norm(mean, dim=1, keepdim=True).clamp(min=NORM_EPS)
        if self.lexical is None:
            return self.head(prompt_embedding, log_len)
        return self.head(prompt_embedding, log_len, self.lexical(token_ids, offsets))   # (batch, n_models) logits


def _metadata(artifact: Artifact, graph: str) -> dict[str, str]:
    m = artifact.manifest
    metadata = {"routoo_graph": graph, "encoder": m.encoder, "max_tokens": str(m.max_tokens),
                "tail_tokens": str(m.tail_tokens),
                **pool_parameters(m.model_names, m.model_prices),
                "encoder_table_digest": m.encoder_table_digest or ""}
    if artifact.lexical is not None:
        metadata["lexical_sha256"] = m.lexical.get("sha256", "")   # "" for a part not yet saved
    return metadata


def _export(module: nn.Module, example: tuple, path: Path, input_names: list[str],
            dynamic_axes: dict, metadata: dict[str, str], opset: int = OPSET) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript (not a
        # dependency here); these graphs use only ops it handles, and the tests check them with onnxruntime.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=list(OUTPUTS),
                          dynamic_axes={**dynamic_axes, QUALITY: {0: "batch"},
                                        EXPECTED_COST_USD: {0: "batch"}})
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export_head(artifact: Artifact, path: str | Path) -> Path:
    """The scoring head alone: PROMPT_EMBEDDING (batch, dim), LOG_LEN (batch,) -> outputs (batch, n_models)."""
    if artifact.lexical is not None:
        raise ValueError("this artifact has a lexical part (lexical.safetensors), whose logits come from the "
                         "prompt's token ids; the head graph takes a prompt embedding and never sees them, so "
                         "it would score without the part. Export the static graph (export_static_predictor), "
                         "which carries it")
    example = (torch.zeros(2, artifact.manifest.dim), torch.zeros(2))
    return _export(HeadGraph(artifact), example, Path(path), ["PROMPT_EMBEDDING", "LOG_LEN"],
                   {"PROMPT_EMBEDDING": {0: "batch"}, "LOG_LEN": {0: "batch"}}, _metadata(artifact, "head"))


def export_static_predictor(artifact: Artifact, path: str | Path, table: torch.Tensor | None = None) -> Path:
    """The static predictor end to end (token ids in); `table` defaults to the artifact's own table."""
    if artifact.manifest.encoder != "static":
        raise ValueError(f"the end-to-end graph needs a static-encoder artifact, this one uses "
                         f"{artifact.manifest.encoder!r}; export the head instead (export_head)")
    if table is None:
        table = artifact.load_encoder().table
    example = (torch.tensor([1, 2, 3], dtype=torch.int64), torch.tensor([0, 1, 3], dtype=torch.int64),
               torch.zeros(2))
    return _export(StaticPredictorGraph(artifact, table), example, Path(path),
                   ["TOKEN_IDS", "OFFSETS", "LOG_LEN"],
                   {"TOKEN_IDS": {0: "n_tokens"}, "OFFSETS": {0: "batch_plus_1"}, "LOG_LEN": {0: "batch"}},
                   _metadata(artifact, "static"), OPSET if artifact.lexical is None else LEXICAL_OPSET)


def _triton_config(name: str, artifact: Artifact, inputs: list[tuple], max_batch_size: int,
                   instance_kind: str) -> str:
    """config.pbtxt text for the onnxruntime backend; inputs are (name, TYPE_*, dims, reshape or None)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    m = artifact.manifest
    config = pb.ModelConfig(name=name, backend="onnxruntime", max_batch_size=max_batch_size)
    for input_name, dtype, dims, reshape in inputs:
        tensor = config.input.add(name=input_name, data_type=pb.DataType.Value(dtype), dims=dims)
        if reshape is not None:
            tensor.reshape.shape.extend(reshape)
    # Batched models leave the batch dimension out of dims; the ragged one returns (batch, n_models).
    out_dims = [len(m.model_names)] if max_batch_size else [-1, len(m.model_names)]
    config.output.add(name=QUALITY, data_type=pb.TYPE_FP32, dims=out_dims, label_filename=POOL_LABELS_FILE)
    config.output.add(name=EXPECTED_COST_USD, data_type=pb.TYPE_FP32, dims=out_dims)
    if max_batch_size:
        config.dynamic_batching.max_queue_delay_microseconds = 100
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
    for key, value in pool_parameters(m.model_names, m.model_prices).items():
        config.parameters[key].string_value = value
    return text_format.MessageToString(config)


def write_triton_repository(artifact_path: str | Path, out: str | Path, *, instance_kind: str = "KIND_GPU",
                            table: torch.Tensor | None = None) -> list[Path]:
    """Triton models for the onnxruntime backend: `routoo_head_onnx` (dynamic batching; LOG_LEN dims [1]
    reshaped to the graph's (batch,)), except for an artifact with a lexical part (export_head refuses it),
    and, for static artifacts, `routoo_static_onnx` (max_batch_size 0: one request carries a whole ragged
    batch, which Triton's batcher cannot concatenate; the same inputs with or without a lexical part)."""
    artifact = Artifact.load(artifact_path)
    out = Path(out)
    models = {}
    if artifact.lexical is None:
        models["routoo_head_onnx"] = (
            [("PROMPT_EMBEDDING", "TYPE_FP32", [artifact.manifest.dim], None), ("LOG_LEN", "TYPE_FP32", [1], [])],
            64, lambda p: export_head(artifact, p))
    if artifact.manifest.encoder == "static":
        models["routoo_static_onnx"] = (
            [("TOKEN_IDS", "TYPE_INT64", [-1], None), ("OFFSETS", "TYPE_INT64", [-1], None),
             ("LOG_LEN", "TYPE_FP32", [-1], None)],
            0, lambda p: export_static_predictor(artifact, p, table))
    # A model folder of ours from an earlier export that this one does not write (routoo_head_onnx of a
    # head-only artifact, then an artifact with a lexical part) would be served beside the new one, stale.
    stale = [name for name in ("routoo_head_onnx", "routoo_static_onnx")
             if name not in models and (out / name / "config.pbtxt").is_file()]
    if stale:
        raise ValueError(f"{out} already holds {stale} from an earlier export, which this artifact does not "
                         f"replace and Triton would serve beside it: export into an empty folder, or remove them")
    written = []
    for name, (inputs, max_batch_size, export) in models.items():
        written.append(export(out / name / "1" / "model.onnx"))
        (out / name / "config.pbtxt").write_text(_triton_config(name, artifact, inputs, max_batch_size,
                                                                instance_kind))
        (out / name / POOL_LABELS_FILE).write_text("".join(f"{n}\n" for n in artifact.manifest.model_names),
                                                   encoding="utf-8")
    return written
