from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tradeoff(_message.Message):
    __slots__ = ("quality_per_usd",)
    QUALITY_PER_USD_FIELD_NUMBER: _ClassVar[int]
    quality_per_usd: float
    def __init__(self, quality_per_usd: _Optional[float] = ...) -> None: ...

class QualityTarget(_message.Message):
    __slots__ = ("tau",)
    TAU_FIELD_NUMBER: _ClassVar[int]
    tau: float
    def __init__(self, tau: _Optional[float] = ...) -> None: ...

class CostCap(_message.Message):
    __slots__ = ("cap_usd",)
    CAP_USD_FIELD_NUMBER: _ClassVar[int]
    cap_usd: float
    def __init__(self, cap_usd: _Optional[float] = ...) -> None: ...

class Constraints(_message.Message):
    __slots__ = ("allow", "deny", "max_latency_ms", "max_cost_usd")
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_USD_FIELD_NUMBER: _ClassVar[int]
    allow: _containers.RepeatedScalarFieldContainer[str]
    deny: _containers.RepeatedScalarFieldContainer[str]
    max_latency_ms: float
    max_cost_usd: float
    def __init__(self, allow: _Optional[_Iterable[str]] = ..., deny: _Optional[_Iterable[str]] = ..., max_latency_ms: _Optional[float] = ..., max_cost_usd: _Optional[float] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("prompt", "tradeoff", "quality_target", "cost_cap", "constraints", "include_scores")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TRADEOFF_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TARGET_FIELD_NUMBER: _ClassVar[int]
    COST_CAP_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SCORES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    tradeoff: Tradeoff
    quality_target: QualityTarget
    cost_cap: CostCap
    constraints: Constraints
    include_scores: bool
    def __init__(self, prompt: _Optional[str] = ..., tradeoff: _Optional[_Union[Tradeoff, _Mapping]] = ..., quality_target: _Optional[_Union[QualityTarget, _Mapping]] = ..., cost_cap: _Optional[_Union[CostCap, _Mapping]] = ..., constraints: _Optional[_Union[Constraints, _Mapping]] = ..., include_scores: _Optional[bool] = ...) -> None: ...

class ModelScore(_message.Message):
    __slots__ = ("model", "quality", "expected_cost_usd")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    model: str
    quality: float
    expected_cost_usd: float
    def __init__(self, model: _Optional[str] = ..., quality: _Optional[float] = ..., expected_cost_usd: _Optional[float] = ...) -> None: ...

class Exclusion(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RouteDecision(_message.Message):
    __slots__ = ("model", "quality", "expected_cost_usd", "policy", "runners_up", "scores", "excluded", "fallback", "content_free")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RUNNERS_UP_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FREE_FIELD_NUMBER: _ClassVar[int]
    model: str
    quality: float
    expected_cost_usd: float
    policy: str
    runners_up: _containers.RepeatedCompositeFieldContainer[ModelScore]
    scores: _containers.RepeatedCompositeFieldContainer[ModelScore]
    excluded: _containers.RepeatedCompositeFieldContainer[Exclusion]
    fallback: bool
    content_free: bool
    def __init__(self, model: _Optional[str] = ..., quality: _Optional[float] = ..., expected_cost_usd: _Optional[float] = ..., policy: _Optional[str] = ..., runners_up: _Optional[_Iterable[_Union[ModelScore, _Mapping]]] = ..., scores: _Optional[_Iterable[_Union[ModelScore, _Mapping]]] = ..., excluded: _Optional[_Iterable[_Union[Exclusion, _Mapping]]] = ..., fallback: _Optional[bool] = ..., content_free: _Optional[bool] = ...) -> None: ...

class RouteStreamRequest(_message.Message):
    __slots__ = ("id", "route")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    route: RouteRequest
    def __init__(self, id: _Optional[str] = ..., route: _Optional[_Union[RouteRequest, _Mapping]] = ...) -> None: ...

class RouteError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RouteStreamResponse(_message.Message):
    __slots__ = ("id", "decision", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    decision: RouteDecision
    error: RouteError
    def __init__(self, id: _Optional[str] = ..., decision: _Optional[_Union[RouteDecision, _Mapping]] = ..., error: _Optional[_Union[RouteError, _Mapping]] = ...) -> None: ...

class RouteBatchRequest(_message.Message):
    __slots__ = ("prompts", "total_budget_usd", "constraints")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BUDGET_USD_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    total_budget_usd: float
    constraints: Constraints
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., total_budget_usd: _Optional[float] = ..., constraints: _Optional[_Union[Constraints, _Mapping]] = ...) -> None: ...

class RouteBatchResponse(_message.Message):
    __slots__ = ("model", "quality", "expected_cost_usd", "total_expected_cost_usd", "total_quality", "quality_per_usd")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EXPECTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_QUALITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_PER_USD_FIELD_NUMBER: _ClassVar[int]
    model: _containers.RepeatedScalarFieldContainer[str]
    quality: _containers.RepeatedScalarFieldContainer[float]
    expected_cost_usd: _containers.RepeatedScalarFieldContainer[float]
    total_expected_cost_usd: float
    total_quality: float
    quality_per_usd: float
    def __init__(self, model: _Optional[_Iterable[str]] = ..., quality: _Optional[_Iterable[float]] = ..., expected_cost_usd: _Optional[_Iterable[float]] = ..., total_expected_cost_usd: _Optional[float] = ..., total_quality: _Optional[float] = ..., quality_per_usd: _Optional[float] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompts: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("models", "quality", "expected_cost_usd")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    quality: _containers.RepeatedScalarFieldContainer[float]
    expected_cost_usd: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, models: _Optional[_Iterable[str]] = ..., quality: _Optional[_Iterable[float]] = ..., expected_cost_usd: _Optional[_Iterable[float]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolModel(_message.Message):
    __slots__ = ("name", "input_usd_per_mtok", "output_usd_per_mtok", "p95_latency_ms", "enabled", "cost_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    COST_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    p95_latency_ms: float
    enabled: bool
    cost_scale: float
    def __init__(self, name: _Optional[str] = ..., input_usd_per_mtok: _Optional[float] = ..., output_usd_per_mtok: _Optional[float] = ..., p95_latency_ms: _Optional[float] = ..., enabled: _Optional[bool] = ..., cost_scale: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[PoolModel]
    def __init__(self, models: _Optional[_Iterable[_Union[PoolModel, _Mapping]]] = ...) -> None: ...
