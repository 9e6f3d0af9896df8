from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "model", "request_id", "raw", "context_parallel", "routing", "energy_budget_j", "latency_budget_ms")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    ENERGY_BUDGET_J_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    model: str
    request_id: str
    raw: bool
    context_parallel: str
    routing: str
    energy_budget_j: float
    latency_budget_ms: float
    def __init__(self, prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ..., raw: _Optional[bool] = ..., context_parallel: _Optional[str] = ..., routing: _Optional[str] = ..., energy_budget_j: _Optional[float] = ..., latency_budget_ms: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Modeled(_message.Message):
    __slots__ = ("ttft_ms", "tpot_ms", "e2e_ms", "energy_j", "note")
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    E2E_MS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    energy_j: float
    note: str
    def __init__(self, ttft_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ..., e2e_ms: _Optional[float] = ..., energy_j: _Optional[float] = ..., note: _Optional[str] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("text", "finish_reason", "usage", "ttft_ms", "tpot_ms", "e2e_ms", "device_id", "device_kind", "device_label", "simulated", "modeled", "attempts", "request_id", "model", "replayed", "context_parallel", "expert")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    E2E_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_LABEL_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    MODELED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: str
    usage: Usage
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    device_id: str
    device_kind: str
    device_label: str
    simulated: bool
    modeled: Modeled
    attempts: int
    request_id: str
    model: str
    replayed: bool
    context_parallel: ContextParallel
    expert: str
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., ttft_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ..., e2e_ms: _Optional[float] = ..., device_id: _Optional[str] = ..., device_kind: _Optional[str] = ..., device_label: _Optional[str] = ..., simulated: _Optional[bool] = ..., modeled: _Optional[_Union[Modeled, _Mapping]] = ..., attempts: _Optional[int] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., replayed: _Optional[bool] = ..., context_parallel: _Optional[_Union[ContextParallel, _Mapping]] = ..., expert: _Optional[str] = ...) -> None: ...

class ContextParallel(_message.Message):
    __slots__ = ("devices", "strategy", "shares", "modeled_prefill_ms", "modeled_energy_j", "note", "modeled_memory_bytes")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    MODELED_PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    MODELED_ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    MODELED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    strategy: str
    shares: _containers.RepeatedScalarFieldContainer[int]
    modeled_prefill_ms: float
    modeled_energy_j: float
    note: str
    modeled_memory_bytes: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, devices: _Optional[_Iterable[str]] = ..., strategy: _Optional[str] = ..., shares: _Optional[_Iterable[int]] = ..., modeled_prefill_ms: _Optional[float] = ..., modeled_energy_j: _Optional[float] = ..., note: _Optional[str] = ..., modeled_memory_bytes: _Optional[_Iterable[float]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("chunk", "final")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    chunk: Chunk
    final: Final
    def __init__(self, chunk: _Optional[_Union[Chunk, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ...) -> None: ...

class PlanQuery(_message.Message):
    __slots__ = ("model", "workload", "rate", "tpot_slo_ms", "ttft_slo_ms", "devices", "max_count", "power_budget_w", "apply", "strict", "simulate", "target", "sim_requests")
    class MaxCountEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    TPOT_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    POWER_BUDGET_W_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    SIMULATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SIM_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    workload: str
    rate: float
    tpot_slo_ms: float
    ttft_slo_ms: float
    devices: _containers.RepeatedScalarFieldContainer[str]
    max_count: _containers.ScalarMap[str, int]
    power_budget_w: float
    apply: bool
    strict: bool
    simulate: bool
    target: float
    sim_requests: int
    def __init__(self, model: _Optional[str] = ..., workload: _Optional[str] = ..., rate: _Optional[float] = ..., tpot_slo_ms: _Optional[float] = ..., ttft_slo_ms: _Optional[float] = ..., devices: _Optional[_Iterable[str]] = ..., max_count: _Optional[_Mapping[str, int]] = ..., power_budget_w: _Optional[float] = ..., apply: _Optional[bool] = ..., strict: _Optional[bool] = ..., simulate: _Optional[bool] = ..., target: _Optional[float] = ..., sim_requests: _Optional[int] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("query", "shards")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    query: PlanQuery
    shards: ShardsQuery
    def __init__(self, query: _Optional[_Union[PlanQuery, _Mapping]] = ..., shards: _Optional[_Union[ShardsQuery, _Mapping]] = ...) -> None: ...

class ShardsQuery(_message.Message):
    __slots__ = ("tokens", "model", "devices", "latency_budget_s", "energy_budget_j", "objective")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_BUDGET_J_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    model: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    latency_budget_s: float
    energy_budget_j: float
    objective: str
    def __init__(self, tokens: _Optional[int] = ..., model: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., latency_budget_s: _Optional[float] = ..., energy_budget_j: _Optional[float] = ..., objective: _Optional[str] = ...) -> None: ...

class Shards(_message.Message):
    __slots__ = ("devices", "kinds", "strategy", "shares", "modeled_latency_s", "modeled_energy_j", "modeled_memory_bytes", "candidates_evaluated", "solve_ms", "candidates", "model", "note")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    MODELED_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    MODELED_ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    MODELED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    SOLVE_MS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    strategy: str
    shares: _containers.RepeatedScalarFieldContainer[int]
    modeled_latency_s: float
    modeled_energy_j: float
    modeled_memory_bytes: _containers.RepeatedScalarFieldContainer[float]
    candidates_evaluated: int
    solve_ms: float
    candidates: _containers.RepeatedScalarFieldContainer[str]
    model: str
    note: str
    def __init__(self, devices: _Optional[_Iterable[int]] = ..., kinds: _Optional[_Iterable[str]] = ..., strategy: _Optional[str] = ..., shares: _Optional[_Iterable[int]] = ..., modeled_latency_s: _Optional[float] = ..., modeled_energy_j: _Optional[float] = ..., modeled_memory_bytes: _Optional[_Iterable[float]] = ..., candidates_evaluated: _Optional[int] = ..., solve_ms: _Optional[float] = ..., candidates: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class PlanBucket(_message.Message):
    __slots__ = ("max_tokens", "kinds", "max_input_tokens", "max_output_tokens", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    kinds: _containers.RepeatedScalarFieldContainer[str]
    max_input_tokens: int
    max_output_tokens: int
    weights: _containers.ScalarMap[str, float]
    def __init__(self, max_tokens: _Optional[int] = ..., kinds: _Optional[_Iterable[str]] = ..., max_input_tokens: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("counts", "cost_per_hour", "baselines", "infeasible_alone", "solve_seconds", "solver", "throughput_source", "note", "applied", "allocation_version", "bundles", "status", "gap", "unservable_mass", "unservable_buckets", "simulation")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class BaselinesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    BASELINES_FIELD_NUMBER: _ClassVar[int]
    INFEASIBLE_ALONE_FIELD_NUMBER: _ClassVar[int]
    SOLVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    UNSERVABLE_MASS_FIELD_NUMBER: _ClassVar[int]
    UNSERVABLE_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    SIMULATION_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.ScalarMap[str, int]
    cost_per_hour: float
    baselines: _containers.ScalarMap[str, float]
    infeasible_alone: _containers.RepeatedScalarFieldContainer[str]
    solve_seconds: float
    solver: str
    throughput_source: str
    note: str
    applied: bool
    allocation_version: int
    bundles: int
    status: str
    gap: float
    unservable_mass: float
    unservable_buckets: _containers.RepeatedCompositeFieldContainer[UnservableBucket]
    simulation: Simulation
    def __init__(self, counts: _Optional[_Mapping[str, int]] = ..., cost_per_hour: _Optional[float] = ..., baselines: _Optional[_Mapping[str, float]] = ..., infeasible_alone: _Optional[_Iterable[str]] = ..., solve_seconds: _Optional[float] = ..., solver: _Optional[str] = ..., throughput_source: _Optional[str] = ..., note: _Optional[str] = ..., applied: _Optional[bool] = ..., allocation_version: _Optional[int] = ..., bundles: _Optional[int] = ..., status: _Optional[str] = ..., gap: _Optional[float] = ..., unservable_mass: _Optional[float] = ..., unservable_buckets: _Optional[_Iterable[_Union[UnservableBucket, _Mapping]]] = ..., simulation: _Optional[_Union[Simulation, _Mapping]] = ...) -> None: ...

class UnservableBucket(_message.Message):
    __slots__ = ("input_index", "output_index", "tokens", "mass")
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MASS_FIELD_NUMBER: _ClassVar[int]
    input_index: int
    output_index: int
    tokens: str
    mass: float
    def __init__(self, input_index: _Optional[int] = ..., output_index: _Optional[int] = ..., tokens: _Optional[str] = ..., mass: _Optional[float] = ...) -> None: ...

class Simulation(_message.Message):
    __slots__ = ("slo_attainment", "target", "meets_target", "p50_tpot_ms", "p99_tpot_ms", "p50_ttft_ms", "p99_ttft_ms", "requests", "rejected", "note")
    SLO_ATTAINMENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MEETS_TARGET_FIELD_NUMBER: _ClassVar[int]
    P50_TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    P99_TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    P50_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    P99_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    slo_attainment: float
    target: float
    meets_target: bool
    p50_tpot_ms: float
    p99_tpot_ms: float
    p50_ttft_ms: float
    p99_ttft_ms: float
    requests: int
    rejected: int
    note: str
    def __init__(self, slo_attainment: _Optional[float] = ..., target: _Optional[float] = ..., meets_target: _Optional[bool] = ..., p50_tpot_ms: _Optional[float] = ..., p99_tpot_ms: _Optional[float] = ..., p50_ttft_ms: _Optional[float] = ..., p99_ttft_ms: _Optional[float] = ..., requests: _Optional[int] = ..., rejected: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("device_id", "kind", "capacity", "active", "alive")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    kind: str
    capacity: int
    active: int
    alive: bool
    def __init__(self, device_id: _Optional[str] = ..., kind: _Optional[str] = ..., capacity: _Optional[int] = ..., active: _Optional[int] = ..., alive: _Optional[bool] = ...) -> None: ...

class PlanResponse(_message.Message):
    __slots__ = ("version", "source", "buckets", "replicas", "allocation", "shards")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    source: str
    buckets: _containers.RepeatedCompositeFieldContainer[PlanBucket]
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    allocation: Allocation
    shards: Shards
    def __init__(self, version: _Optional[int] = ..., source: _Optional[str] = ..., buckets: _Optional[_Iterable[_Union[PlanBucket, _Mapping]]] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., allocation: _Optional[_Union[Allocation, _Mapping]] = ..., shards: _Optional[_Union[Shards, _Mapping]] = ...) -> None: ...

class SelectExpertsRequest(_message.Message):
    __slots__ = ("query", "energy_budget_j", "latency_budget_ms", "max_experts", "max_tokens")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ENERGY_BUDGET_J_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    query: str
    energy_budget_j: float
    latency_budget_ms: float
    max_experts: int
    max_tokens: int
    def __init__(self, query: _Optional[str] = ..., energy_budget_j: _Optional[float] = ..., latency_budget_ms: _Optional[float] = ..., max_experts: _Optional[int] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class SelectExpertsResponse(_message.Message):
    __slots__ = ("experts", "weights", "energy_j", "latency_ms", "deployed", "objective_value", "note", "routed", "hosts")
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_VALUE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ROUTED_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    experts: _containers.RepeatedScalarFieldContainer[str]
    weights: _containers.RepeatedScalarFieldContainer[float]
    energy_j: float
    latency_ms: float
    deployed: _containers.RepeatedScalarFieldContainer[str]
    objective_value: float
    note: str
    routed: str
    hosts: _containers.RepeatedCompositeFieldContainer[ExpertHost]
    def __init__(self, experts: _Optional[_Iterable[str]] = ..., weights: _Optional[_Iterable[float]] = ..., energy_j: _Optional[float] = ..., latency_ms: _Optional[float] = ..., deployed: _Optional[_Iterable[str]] = ..., objective_value: _Optional[float] = ..., note: _Optional[str] = ..., routed: _Optional[str] = ..., hosts: _Optional[_Iterable[_Union[ExpertHost, _Mapping]]] = ...) -> None: ...

class ExpertHost(_message.Message):
    __slots__ = ("expert", "device_ids", "energy_j", "latency_ms")
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    expert: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    energy_j: float
    latency_ms: float
    def __init__(self, expert: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., energy_j: _Optional[float] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Device(_message.Message):
    __slots__ = ("device_id", "kind", "label")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    kind: str
    label: str
    def __init__(self, device_id: _Optional[str] = ..., kind: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("devices", "replicas", "admitted", "max_queue", "plan_version", "counters", "model")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    admitted: int
    max_queue: int
    plan_version: int
    counters: _containers.ScalarMap[str, float]
    model: str
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., admitted: _Optional[int] = ..., max_queue: _Optional[int] = ..., plan_version: _Optional[int] = ..., counters: _Optional[_Mapping[str, float]] = ..., model: _Optional[str] = ...) -> None: ...
