using System.Globalization;
using System.Text.Json.Nodes;

using QLoRA.Models;

using static TorchSharp.torch;

namespace QLoRA.Reports;

/// <summary>The three ways of fine-tuning the training benchmark compares.</summary>
public enum TrainMethod
{
    /// <summary>QLoRA: linear weights in NF4 with double-quantized scales (block 64), bf16 activations, paged AdamW.</summary>
    QLoRA,

    /// <summary>LoRA on a bf16 base (bf16 activations), AdamW.</summary>
    LoraBf16,

    /// <summary>LoRA on an fp32 base (fp32 activations), AdamW.</summary>
    LoraFp32,
}

/// <summary>Names and settings of the <see cref="TrainMethod"/>s.</summary>
public static class TrainMethods
{
    /// <summary>The methods in report order.</summary>
    public static IReadOnlyList<TrainMethod> All { get; } = [TrainMethod.QLoRA, TrainMethod.LoraBf16, TrainMethod.LoraFp32];

    /// <summary>"qlora", "lora-bf16", "lora-fp32".</summary>
    public static string Key(this TrainMethod m) => m switch
    {
        TrainMethod.QLoRA => "qlora",
        TrainMethod.LoraBf16 => "lora-bf16",
        TrainMethod.LoraFp32 => "lora-fp32",
        _ => throw new ArgumentOutOfRangeException(nameof(m), m, null),
    };

    /// <summary>The table label.</summary>
    public static string Label(this TrainMethod m) => m switch
    {
        TrainMethod.QLoRA => "QLoRA (NF4+DQ)",
        TrainMethod.LoraBf16 => "LoRA, bf16 base",
        TrainMethod.LoraFp32 => "LoRA, fp32 base",
        _ => throw new ArgumentOutOfRangeException(nameof(m), m, null),
    };

    /// <summary>Parses a <see cref="Key"/>.</summary>
    /// <exception cref="ArgumentException">Unknown name.</exception>
    public static TrainMethod Parse(string key)
    {
        foreach (var m in All)
            if (string.Equals(m.Key(), key, StringComparison.OrdinalIgnoreCase)) return m;
        throw new ArgumentException($"unknown training method \"{key}\" (known: {string.Join(", ", All.Select(x => x.Key()))})", nameof(key));
    }

    /// <summary>How the base's linear weights are stored.</summary>
    public static QuantSpec Quant(this TrainMethod m) => m == TrainMethod.QLoRA ? QuantSpec.Nf4 : QuantSpec.None;

    /// <summary>Activation dtype (and dense weight dtype): bf16 for QLoRA (the paper's compute dtype) and the bf16 base.</summary>
    public static ScalarType ComputeDtype(this TrainMethod m) => m == TrainMethod.LoraFp32 ? ScalarType.Float32 : ScalarType.BFloat16;

    /// <summary>Optimizer states in the native pager (QLoRA's paged optimizer).</summary>
    public static bool PagedOptimizer(this TrainMethod m) => m == TrainMethod.QLoRA;
}

/// <summary>One configuration of the training benchmark, run in a child process of its own.</summary>
public sealed record TrainCase
{
    /// <summary>Model key (<see cref="SyntheticModels.All"/>).</summary>
    public required string Model { get; init; }

    /// <summary>How the model is fine-tuned.</summary>
    public required TrainMethod Method { get; init; }

    /// <summary>Tokens per sequence.</summary>
    public required int SeqLen { get; init; }

    /// <summary>Sequences per step.</summary>
    public int Batch { get; init; } = 1;

    /// <summary>Untimed steps first (first-step allocations, lazy initialization).</summary>
    public int Warmup { get; init; } = 1;

    /// <summary>Timed steps (the median is reported).</summary>
    public int Steps { get; init; } = 3;

    /// <summary>Steps with gradient checkpointing run before the others, for its activation memory and time (0: skip).</summary>
    public int CheckpointSteps { get; init; } = 1;

    /// <summary>LoRA rank.</summary>
    public int Rank { get; init; } = 64;

    /// <summary>LoRA alpha.</summary>
    public double Alpha { get; init; } = 16;

    /// <summary>LoRA dropout.</summary>
    public double Dropout { get; init; } = 0.05;

    /// <summary>Seed of the random weights (synthetic models), the LoRA init and the token ids.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Checks the values.</summary>
    public TrainCase Validate()
    {
        SyntheticModels.Find(Model);
        if (SeqLen < 2) throw new ArgumentOutOfRangeException(nameof(SeqLen), SeqLen, "the sequence length must be at least 2");
        if (Batch < 1) throw new ArgumentOutOfRangeException(nameof(Batch), Batch, "the batch must be at least 1");
        if (Warmup < 0) throw new ArgumentOutOfRangeException(nameof(Warmup), Warmup, "warmup steps must be >= 0");
        if (Steps < 1) throw new ArgumentOutOfRangeException(nameof(Steps), Steps, "at least one timed step");
        if (CheckpointSteps < 0) throw new ArgumentOutOfRangeException(nameof(CheckpointSteps), CheckpointSteps, "checkpointed steps must be >= 0");
        if (Rank < 1) throw new ArgumentOutOfRangeException(nameof(Rank), Rank, "the LoRA rank must be at least 1");
        return this;
    }

    /// <summary>The JSON a child process is started with.</summary>
    public JsonObject ToJson() => new()
    {
        ["model"] = Model,
        ["method"] = Method.Key(),
        ["seq_len"] = SeqLen,
        ["batch"] = Batch,
        ["warmup"] = Warmup,
        ["steps"] = Steps,
        ["checkpoint_steps"] = CheckpointSteps,
        ["rank"] = Rank,
        ["alpha"] = Alpha,
        ["dropout"] = Dropout,
        ["seed"] = Seed,
    };

    /// <summary>Reads <see cref="ToJson"/>'s form.</summary>
    /// <exception cref="ArgumentException">A missing or invalid field (named).</exception>
    public static TrainCase FromJson(JsonObject o)
    {
        T Get<T>(string key, T? fallback = default, bool required = false)
        {
            if (o[key] is JsonValue v && v.TryGetValue(out T? value)) return value!;
            if (o[key] is JsonValue dv && typeof(T) == typeof(double) && dv.TryGetValue(out int i)) return (T)(object)(double)i;
            if (required || fallback is null) throw new ArgumentException($"training case JSON: missing or invalid \"{key}\" in {o.ToJsonString()}");
            return fallback;
        }
        var defaults = new TrainCase { Model = "", Method = TrainMethod.QLoRA, SeqLen = 2 };
        return new TrainCase
        {
            Model = Get<string>("model", required: true),
            Method = TrainMethods.Parse(Get<string>("method", required: true)),
            SeqLen = Get<int>("seq_len", required: true),
            Batch = Get("batch", defaults.Batch),
            Warmup = Get("warmup", defaults.Warmup),
            Steps = Get("steps", defaults.Steps),
            CheckpointSteps = Get("checkpoint_steps", defaults.CheckpointSteps),
            Rank = Get("rank", defaults.Rank),
            Alpha = Get("alpha", defaults.Alpha),
            Dropout = Get("dropout", defaults.Dropout),
            Seed = Get("seed", defaults.Seed),
        }.Validate();
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Model} seq {SeqLen} x{Batch} {Method.Key()}";
}

/// <summary>
/// What one training configuration measured (the child process's JSON): sizes of every part of the memory from
/// the actual allocations, the resident-memory peaks, and the step times.
/// </summary>
public sealed record TrainCaseResult
{
    /// <summary>The configuration.</summary>
    public required TrainCase Case { get; init; }

    /// <summary>All parameters of the model (embeddings, norms, head, linear; tied counted once).</summary>
    public required long Parameters { get; init; }

    /// <summary>Parameters of the decoder's linear layers (the quantized ones).</summary>
    public required long LinearParameters { get; init; }

    /// <summary>Bytes of the linear weights as stored (Q4 storage_bytes: packed codes + scales; or dense tensors).</summary>
    public required long LinearWeightBytes { get; init; }

    /// <summary>Bytes of embeddings, norms and head (kept 16/32-bit).</summary>
    public required long OtherWeightBytes { get; init; }

    /// <summary>Trainable LoRA parameters.</summary>
    public required long LoraParameters { get; init; }

    /// <summary>Bytes of the LoRA parameters (fp32 master weights).</summary>
    public required long LoraBytes { get; init; }

    /// <summary>Bytes of the LoRA gradients after backward.</summary>
    public required long GradientBytes { get; init; }

    /// <summary>Optimizer state bytes (qlora_adamw_info.state_bytes).</summary>
    public required long OptimizerStateBytes { get; init; }

    /// <summary>True when the optimizer states live in the native pager.</summary>
    public required bool OptimizerPaged { get; init; }

    /// <summary>C heap held by the autograd graph after the forward pass (median over the timed steps), no checkpointing.</summary>
    public required long ActivationBytes { get; init; }

    /// <summary>The same with gradient checkpointing (-1 when not measured).</summary>
    public required long CheckpointActivationBytes { get; init; }

    /// <summary>Resident memory of the process before the model existed (.NET runtime, libtorch, native core).</summary>
    public required long RuntimeResidentBytes { get; init; }

    /// <summary>VmHWM while building the model.</summary>
    public required long BuildPeakBytes { get; init; }

    /// <summary>VmHWM over the steps without checkpointing (reset before them).</summary>
    public required long TrainPeakBytes { get; init; }

    /// <summary>VmHWM over the checkpointed steps (reset before them; -1 when not run).</summary>
    public required long CheckpointPeakBytes { get; init; }

    /// <summary>Peak of the native core's scratch (tiles of the fused kernels).</summary>
    public required long NativeScratchPeakBytes { get; init; }

    /// <summary>Wall seconds of each timed step.</summary>
    public required IReadOnlyList<double> StepSeconds { get; init; }

    /// <summary>Process CPU seconds of each timed step.</summary>
    public required IReadOnlyList<double> CpuSeconds { get; init; }

    /// <summary>Median wall seconds of forward (incl. loss), backward and optimizer step.</summary>
    public required (double Forward, double Backward, double Optimizer) Phases { get; init; }

    /// <summary>Wall seconds of the last checkpointed step (-1 when not run).</summary>
    public required double CheckpointStepSeconds { get; init; }

    /// <summary>Loss of the last step (a sanity check: finite).</summary>
    public required double Loss { get; init; }

    /// <summary>Seconds to build (or load) the model.</summary>
    public required double BuildSeconds { get; init; }

    /// <summary>Load average at the start and the end of the child.</summary>
    public required string LoadAverage { get; init; }

    /// <summary>Median wall seconds per step.</summary>
    public double MedianStepSeconds => Median(StepSeconds);

    /// <summary>Median CPU seconds per step.</summary>
    public double MedianCpuSeconds => Median(CpuSeconds);

    /// <summary>Tokens per step.</summary>
    public long TokensPerStep => (long)Case.Batch * Case.SeqLen;

    /// <summary>Training tokens per second (median step).</summary>
    public double TokensPerSecond => TokensPerStep / MedianStepSeconds;

    /// <summary>Peak resident memory of the process (without checkpointing): the larger of building and training.</summary>
    public long PeakBytes => Math.Max(BuildPeakBytes, TrainPeakBytes);

    /// <summary>Bytes per parameter of the linear (quantized) weights.</summary>
    public double LinearBytesPerParameter => (double)LinearWeightBytes / LinearParameters;

    /// <summary>Bytes per parameter of all weights (linear + embeddings, norms, head).</summary>
    public double ModelBytesPerParameter => (double)(LinearWeightBytes + OtherWeightBytes) / Parameters;

    /// <summary>The parts measured one by one (runtime, weights, LoRA, gradients, optimizer states, activations).</summary>
    public long AccountedBytes(bool checkpointing) =>
        RuntimeResidentBytes + LinearWeightBytes + OtherWeightBytes + LoraBytes + GradientBytes + OptimizerStateBytes +
        (checkpointing ? CheckpointActivationBytes : ActivationBytes);

    /// <summary>The median of <paramref name="values"/> (mean of the middle two for an even count).</summary>
    public static double Median(IReadOnlyList<double> values)
    {
        if (values.Count == 0) return double.NaN;
        var s = values.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    /// <summary>The child's JSON.</summary>
    public JsonObject ToJson() => new()
    {
        ["case"] = Case.ToJson(),
        ["params"] = Parameters,
        ["linear_params"] = LinearParameters,
        ["linear_weight_bytes"] = LinearWeightBytes,
        ["other_weight_bytes"] = OtherWeightBytes,
        ["lora_params"] = LoraParameters,
        ["lora_bytes"] = LoraBytes,
        ["gradient_bytes"] = GradientBytes,
        ["optimizer_state_bytes"] = OptimizerStateBytes,
        ["optimizer_paged"] = OptimizerPaged,
        ["activation_bytes"] = ActivationBytes,
        ["checkpoint_activation_bytes"] = CheckpointActivationBytes,
        ["runtime_rss_bytes"] = RuntimeResidentBytes,
        ["build_peak_rss_bytes"] = BuildPeakBytes,
        ["train_peak_rss_bytes"] = TrainPeakBytes,
        ["checkpoint_peak_rss_bytes"] = CheckpointPeakBytes,
        ["native_scratch_peak_bytes"] = NativeScratchPeakBytes,
        ["step_seconds"] = new JsonArray(StepSeconds.Select(s => (JsonNode)s).ToArray()),
        ["cpu_seconds"] = new JsonArray(CpuSeconds.Select(s => (JsonNode)s).ToArray()),
        ["forward_seconds"] = Phases.Forward,
        ["backward_seconds"] = Phases.Backward,
        ["optimizer_seconds"] = Phases.Optimizer,
        ["checkpoint_step_seconds"] = CheckpointStepSeconds,
        ["loss"] = Loss,
        ["build_seconds"] = BuildSeconds,
        ["load_average"] = LoadAverage,
        ["tokens_per_second"] = TokensPerSecond,
        ["peak_rss_bytes"] = PeakBytes,
        ["linear_bytes_per_param"] = LinearBytesPerParameter,
        ["model_bytes_per_param"] = ModelBytesPerParameter,
    };

    /// <summary>Reads <see cref="ToJson"/>'s form.</summary>
    /// <exception cref="ArgumentException">A missing field (named).</exception>
    public static TrainCaseResult FromJson(JsonObject o)
    {
        JsonNode N(string key) => o[key] ?? throw new ArgumentException($"training result JSON: missing \"{key}\"");
        long L(string key) => N(key).GetValue<long>();
        double D(string key) => N(key).GetValue<double>();
        double[] A(string key) => N(key).AsArray().Select(x => x!.GetValue<double>()).ToArray();
        return new TrainCaseResult
        {
            Case = TrainCase.FromJson(N("case").AsObject()),
            Parameters = L("params"),
            LinearParameters = L("linear_params"),
            LinearWeightBytes = L("linear_weight_bytes"),
            OtherWeightBytes = L("other_weight_bytes"),
            LoraParameters = L("lora_params"),
            LoraBytes = L("lora_bytes"),
            GradientBytes = L("gradient_bytes"),
            OptimizerStateBytes = L("optimizer_state_bytes"),
            OptimizerPaged = N("optimizer_paged").GetValue<bool>(),
            ActivationBytes = L("activation_bytes"),
            CheckpointActivationBytes = L("checkpoint_activation_bytes"),
            RuntimeResidentBytes = L("runtime_rss_bytes"),
            BuildPeakBytes = L("build_peak_rss_bytes"),
            TrainPeakBytes = L("train_peak_rss_bytes"),
            CheckpointPeakBytes = L("checkpoint_peak_rss_bytes"),
            NativeScratchPeakBytes = L("native_scratch_peak_bytes"),
            StepSeconds = A("step_seconds"),
            CpuSeconds = A("cpu_seconds"),
            Phases = (D("forward_seconds"), D("backward_seconds"), D("optimizer_seconds")),
            CheckpointStepSeconds = D("checkpoint_step_seconds"),
            Loss = D("loss"),
            BuildSeconds = D("build_seconds"),
            LoadAverage = N("load_average").GetValue<string>(),
        };
    }

    internal static string Mib(long bytes) => bytes < 0 ? "-" : (bytes / 1048576.0).ToString("F0", CultureInfo.InvariantCulture);
}
