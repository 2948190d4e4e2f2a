using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

using QLoRA.Adapters;
using QLoRA.Data;
using QLoRA.Lora;
using QLoRA.Models;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Training;

/// <summary>Settings of a fine-tuning run (defaults: the QLoRA paper's, scaled to a small model).</summary>
public sealed record TrainerOptions
{
    /// <summary>Where the adapter, checkpoints, metrics, plot and effective config go.</summary>
    public required string OutputDirectory { get; init; }

    /// <summary>Optimizer steps.</summary>
    public int Steps { get; init; } = 200;

    /// <summary>Examples per micro-batch.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>Micro-batches per optimizer step (gradient accumulation).</summary>
    public int GradientAccumulation { get; init; } = 1;

    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 2e-4;

    /// <summary>Schedule after warmup.</summary>
    public LrScheduleKind Schedule { get; init; } = LrScheduleKind.Constant;

    /// <summary>Warmup steps (null: 3% of the steps, the paper's warmup ratio).</summary>
    public int? WarmupSteps { get; init; }

    /// <summary>Global-norm clipping (the paper: 0.3; 0 = off).</summary>
    public double MaxGradNorm { get; init; } = 0.3;

    /// <summary>Decoupled weight decay (the paper: 0).</summary>
    public double WeightDecay { get; init; }

    /// <summary>8-bit optimizer states.</summary>
    public bool EightBitOptimizer { get; init; }

    /// <summary>Keep optimizer states in the native pager with this budget (bytes); null = unpaged.</summary>
    public long? PagerBudgetBytes { get; init; }

    /// <summary>Seed of LoRA init, dropout and data order.</summary>
    public int Seed { get; init; } = 42;

    /// <summary>Recompute each decoder layer in backward instead of keeping its activations.</summary>
    public bool GradientCheckpointing { get; init; }

    /// <summary>Batch similar lengths together.</summary>
    public bool GroupByLength { get; init; } = true;

    /// <summary>Evaluate every this many steps (0 = only before and after).</summary>
    public int EvalEvery { get; init; }

    /// <summary>Write a checkpoint every this many steps (0 = only at the end or on a stop).</summary>
    public int SaveEvery { get; init; } = 50;

    /// <summary>Checkpoints kept (the newest).</summary>
    public int KeepCheckpoints { get; init; } = 2;

    /// <summary>Batch size of evaluation.</summary>
    public int EvalBatchSize { get; init; } = 16;

    /// <summary>Continue from the newest checkpoint in the output directory.</summary>
    public bool Resume { get; init; }

    /// <summary>The adapter file's dtype (fp32 or bf16).</summary>
    public ScalarType AdapterDtype { get; init; } = ScalarType.Float32;

    /// <summary>base_model_name_or_path written into adapter_config.json.</summary>
    public string BaseModelName { get; init; } = "";

    /// <summary>Write loss.png at the end.</summary>
    public bool Plot { get; init; } = true;

    /// <summary>Checks the values.</summary>
    public TrainerOptions Validate()
    {
        if (Steps < 1) throw new ArgumentOutOfRangeException(nameof(Steps), Steps, "the number of steps must be at least 1");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "the batch size must be at least 1");
        if (GradientAccumulation < 1) throw new ArgumentOutOfRangeException(nameof(GradientAccumulation), GradientAccumulation, "gradient accumulation must be at least 1");
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate)) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "the learning rate must be a positive number");
        if (WarmupSteps is < 0) throw new ArgumentOutOfRangeException(nameof(WarmupSteps), WarmupSteps, "warmup steps must be >= 0");
        if (!(MaxGradNorm >= 0)) throw new ArgumentOutOfRangeException(nameof(MaxGradNorm), MaxGradNorm, "max grad norm must be >= 0");
        if (!(WeightDecay >= 0)) throw new ArgumentOutOfRangeException(nameof(WeightDecay), WeightDecay, "weight decay must be >= 0");
        if (EvalEvery < 0) throw new ArgumentOutOfRangeException(nameof(EvalEvery), EvalEvery, "the evaluation interval must be >= 0");
        if (SaveEvery < 0) throw new ArgumentOutOfRangeException(nameof(SaveEvery), SaveEvery, "the checkpoint interval must be >= 0");
        if (KeepCheckpoints < 1) throw new ArgumentOutOfRangeException(nameof(KeepCheckpoints), KeepCheckpoints, "keep at least one checkpoint");
        if (EvalBatchSize < 1) throw new ArgumentOutOfRangeException(nameof(EvalBatchSize), EvalBatchSize, "the eval batch size must be at least 1");
        return this;
    }

    /// <summary>The warmup steps in effect.</summary>
    public int EffectiveWarmup => WarmupSteps ?? (int)Math.Ceiling(0.03 * Steps);
}

/// <summary>What a run produced.</summary>
/// <param name="Steps">Optimizer steps completed (all of them unless stopped).</param>
/// <param name="Stopped">True when the run was stopped early (a checkpoint was written).</param>
/// <param name="InitialEvalLoss">Eval loss before training (NaN when there is no eval split or the run resumed past it).</param>
/// <param name="FinalEvalLoss">Eval loss at the end (NaN without an eval split).</param>
/// <param name="TrainLoss">Mean training loss over the last min(10, steps) steps.</param>
/// <param name="TokensPerSecond">Training tokens per second over the steps of this session.</param>
/// <param name="PeakMemoryBytes">Peak resident memory of the process.</param>
/// <param name="Losses">Training loss of every step, from step 1 (including steps before a resume).</param>
/// <param name="AdapterDirectory">Where the final adapter was written (null when stopped).</param>
public sealed record TrainResult(long Steps, bool Stopped, double InitialEvalLoss, double FinalEvalLoss, double TrainLoss,
                                 double TokensPerSecond, long PeakMemoryBytes, IReadOnlyList<double> Losses, string? AdapterDirectory);

/// <summary>
/// QLoRA fine-tuning: trains the LoRA adapters of a <see cref="LoraModel"/> with <see cref="PagedAdamW"/> on
/// tokenized examples. Each optimizer step is: zero-grad, then for each micro-batch forward and backward (the
/// loss of a micro-batch weighted by its share of the step's response tokens, so the step's loss is the mean
/// over all its response tokens), then one optimizer step with global-norm clipping. Every micro-batch runs in
/// its own dispose scope. The run is a pure function of the seed: LoRA init, dropout (torch's default
/// generator, seeded by <see cref="TrainerOptions.Seed"/>), and the data order; checkpoints keep the adapter,
/// the optimizer state, the generator state and the data position, so a resumed run continues bit for bit.
/// </summary>
public sealed class Trainer
{
    private readonly LoraModel _lora;
    private readonly TrainerOptions _o;
    private readonly IReadOnlyList<TokenizedExample> _train;
    private readonly IReadOnlyList<TokenizedExample> _eval;
    private readonly int _padId;

    /// <summary>Sets up a run; nothing is computed until <see cref="Fit"/>.</summary>
    public Trainer(LoraModel lora, IReadOnlyList<TokenizedExample> train, IReadOnlyList<TokenizedExample> eval, int padId, TrainerOptions options)
    {
        _lora = lora ?? throw new ArgumentNullException(nameof(lora));
        _o = (options ?? throw new ArgumentNullException(nameof(options))).Validate();
        if (train.Count == 0) throw new ArgumentException("no training examples (after tokenization)", nameof(train));
        _train = train;
        _eval = eval;
        _padId = padId;
    }

    /// <summary>Called after every optimizer step (progress display).</summary>
    public Action<StepMetrics>? OnStep { get; init; }

    /// <summary>Called after every evaluation.</summary>
    public Action<EvalMetrics>? OnEval { get; init; }

    /// <summary>Receives log lines.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>The checkpoint folder of the output directory.</summary>
    public string CheckpointRoot => Path.Combine(_o.OutputDirectory, "checkpoints");

    /// <summary>
    /// Runs the training to <see cref="TrainerOptions.Steps"/> (or until <paramref name="cancel"/> is signalled, which
    /// stops after the current step and writes a checkpoint), then writes the adapter and the plot.
    /// </summary>
    public TrainResult Fit(CancellationToken cancel = default)
    {
        var o = _o;
        var model = _lora.Model;
        Directory.CreateDirectory(o.OutputDirectory);
        var device = model.Model.EmbedTokens.Weight.device;
        var schedule = new LrSchedule(o.Schedule, o.LearningRate, o.EffectiveWarmup, o.Steps);
        var data = new DataStream(_train, o.BatchSize, o.Seed, o.GroupByLength);
        using var optimizer = new PagedAdamW(_lora.Parameters(), new PagedAdamWOptions
        {
            LearningRate = (float)schedule.At(0),
            MaxGradNorm = (float)o.MaxGradNorm,
            WeightDecay = (float)o.WeightDecay,
            EightBit = o.EightBitOptimizer,
            PagerBudgetBytes = o.PagerBudgetBytes,
            SpillDirectory = o.PagerBudgetBytes is null ? null : Path.Combine(o.OutputDirectory, "pager"),
        }, NativeRuntime.Context);
        GradientCheckpointing.Enable(model, o.GradientCheckpointing);

        RemoveDebris();
        long step = 0;
        double initialEval = double.NaN;
        torch.manual_seed(o.Seed);
        string? resumedFrom = null;
        if (o.Resume && LatestCheckpoint(CheckpointRoot) is { } ckpt)
        {
            var state = LoadCheckpoint(ckpt, optimizer, data);
            step = state.Step;
            initialEval = state.InitialEvalLoss;
            resumedFrom = ckpt;
            Log?.Invoke($"resumed from {ckpt} (step {step}, epoch {data.Position.Epoch}, batch {data.Position.Batch})");
        }
        else if (o.Resume)
        {
            Log?.Invoke($"--resume: no checkpoint in {CheckpointRoot}; starting from step 0");
        }
        long resumedStep = step;
        WriteEffectiveConfig();

        using var metrics = new MetricsLog(o.OutputDirectory, resumedFrom is null ? null : step);
        if (resumedFrom is null && _eval.Count > 0)
        {
            initialEval = Evaluate();
            var m = new EvalMetrics(0, initialEval, EvalTokens);
            metrics.Add(m);
            OnEval?.Invoke(m);
        }

        var session = Stopwatch.StartNew();
        long sessionTokens = 0;
        bool stopped = false;
        model.train();
        while (step < o.Steps)
        {
            var sw = Stopwatch.StartNew();
            double lr = schedule.At(step);
            optimizer.LearningRate = (float)lr;
            var micro = new List<IReadOnlyList<TokenizedExample>>(o.GradientAccumulation);
            for (int i = 0; i < o.GradientAccumulation; i++) micro.Add(data.Next());
            long stepTrainTokens = micro.Sum(b => b.Sum(e => (long)e.TrainTokens));
            if (stepTrainTokens == 0) throw new InvalidOperationException($"step {step + 1} has no response tokens to learn from");

            optimizer.ZeroGrad();
            double lossSum = 0;
            long tokens = 0;
            foreach (var examples in micro)
            {
                using var scope = NewDisposeScope();
                using var batch = Batching.Collate(examples, _padId, device);
                var nll = SummedLoss(model, batch);                       // forward
                var loss = nll / stepTrainTokens;
                loss.backward();                                          // backward
                lossSum += nll.item<float>();
                tokens += batch.Tokens;
            }
            var info = optimizer.Step();                                  // step
            step++;

            double seconds = sw.Elapsed.TotalSeconds;
            sessionTokens += tokens;
            var (rss, peak) = ProcessMemory.Read();
            var sm = new StepMetrics(step, lossSum / stepTrainTokens, lr, info.GradNorm, tokens, tokens / Math.Max(seconds, 1e-9), seconds, rss, peak);
            metrics.Add(sm);
            OnStep?.Invoke(sm);

            bool last = step == o.Steps;
            if (!last && o.EvalEvery > 0 && step % o.EvalEvery == 0 && _eval.Count > 0)
            {
                var em = new EvalMetrics(step, Evaluate(), EvalTokens);
                metrics.Add(em);
                OnEval?.Invoke(em);
                model.train();
            }
            stopped = !last && cancel.IsCancellationRequested;
            if (stopped || (!last && o.SaveEvery > 0 && step % o.SaveEvery == 0))
                SaveCheckpoint(step, optimizer, data, initialEval);
            if (stopped) break;
        }

        double finalEval = double.NaN;
        string? adapterDir = null;
        if (!stopped)
        {
            if (_eval.Count > 0)
            {
                finalEval = Evaluate();
                var em = new EvalMetrics(step, finalEval, EvalTokens);
                metrics.Add(em);
                OnEval?.Invoke(em);
            }
            // A resumed run that was already at its last step (killed after its final checkpoint) has that
            // checkpoint on disk: rewriting it would only open a window without it.
            if (resumedFrom is null || step != resumedStep)
                SaveCheckpoint(step, optimizer, data, initialEval);
            PeftAdapter.Save(_lora, o.OutputDirectory, o.BaseModelName, o.AdapterDtype);
            adapterDir = o.OutputDirectory;
        }
        model.eval();
        if (o.Plot) metrics.SavePlot($"QLoRA fine-tuning ({_lora.Model.Config.HiddenSize}-dim, {o.Steps} steps, r={_lora.Options.Rank})");
        var losses = metrics.Train.Select(m => m.Loss).ToList();
        var tail = losses.TakeLast(Math.Min(10, losses.Count)).ToList();
        return new TrainResult(step, stopped, initialEval, finalEval, tail.Count == 0 ? double.NaN : tail.Average(),
                               sessionTokens / Math.Max(session.Elapsed.TotalSeconds, 1e-9), ProcessMemory.Read().Peak, losses, adapterDir);
    }

    /// <summary>Response tokens of the last evaluation.</summary>
    public long EvalTokens { get; private set; }

    /// <summary>Mean cross-entropy per response token over the evaluation split (no dropout, no gradients).</summary>
    public double Evaluate()
    {
        double loss = Evaluate(_lora.Model, _eval, _padId, _o.EvalBatchSize, out long n);
        EvalTokens = n;
        return loss;
    }

    /// <summary>Mean cross-entropy per trained token of <paramref name="model"/> on <paramref name="examples"/> (model put in eval mode).</summary>
    public static double Evaluate(LlamaForCausalLM model, IReadOnlyList<TokenizedExample> examples, int padId, int batchSize, out long tokens)
    {
        model.eval();
        var device = model.Model.EmbedTokens.Weight.device;
        double sum = 0;
        tokens = 0;
        using var _ = no_grad();
        // Longest first in fixed order: deterministic and with little padding.
        var order = Enumerable.Range(0, examples.Count).OrderByDescending(i => examples[i].Length).ThenBy(i => i).ToArray();
        for (int start = 0; start < order.Length; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var chunk = order.Skip(start).Take(batchSize).Select(i => examples[i]).ToList();
            using var batch = Batching.Collate(chunk, padId, device);
            sum += SummedLoss(model, batch).item<float>();
            tokens += batch.TrainTokens;
        }
        return tokens == 0 ? double.NaN : sum / tokens;
    }

    /// <summary>
    /// Summed next-token cross-entropy over the batch's labelled positions (a scalar tensor). The output head runs
    /// only on the positions that have a label: with the loss on responses only, most prompt and padding positions
    /// never get logits (the head is the largest matmul of a small-dimension, large-vocabulary model).
    /// </summary>
    public static Tensor SummedLoss(LlamaForCausalLM model, Batch batch)
    {
        using var scope = NewDisposeScope();
        var h = model.HiddenStates(batch.Ids);                                        // [B, T, D]
        long t = h.shape[1];
        var labels = batch.Labels.narrow(1, 1, t - 1).reshape(-1);                   // the shift: position i predicts token i + 1
        var keep = labels.ne(QLoRA.Data.ExampleTokenizer.IgnoreIndex).nonzero().squeeze(1);
        var states = h.narrow(1, 0, t - 1).reshape(-1, h.shape[2]).index_select(0, keep);
        var logits = model.LmHead.call(states);                                       // [N, V]
        if (logits.dtype != ScalarType.Float32) logits = logits.to(ScalarType.Float32);
        var loss = nn.functional.cross_entropy(logits, labels.index_select(0, keep), reduction: nn.Reduction.Sum);
        return loss.MoveToOuterDisposeScope();
    }

    // ------------------------------------------------------------------ checkpoints

    private sealed record CheckpointState(long Step, double InitialEvalLoss);

    /// <summary>The newest complete checkpoint directory under <paramref name="root"/> (checkpoints/step-NNNNNNNN), or null.</summary>
    public static string? LatestCheckpoint(string root)
    {
        if (!Directory.Exists(root)) return null;
        return Directory.GetDirectories(root, "step-*")
            .Where(d => long.TryParse(Path.GetFileName(d)[5..], NumberStyles.None, CultureInfo.InvariantCulture, out _))
            .OrderByDescending(d => long.Parse(Path.GetFileName(d)[5..], CultureInfo.InvariantCulture))
            .FirstOrDefault(d => File.Exists(Path.Combine(d, "trainer_state.json")));
    }

    /// <summary>
    /// Writes checkpoints/step-N: the adapter (fp32), optimizer.bin, rng.bin (torch's default generator) and
    /// trainer_state.json (step, data position, seed). Everything goes to a temporary directory first, which is
    /// renamed into place: a checkpoint directory either exists complete or not at all.
    /// </summary>
    private void SaveCheckpoint(long step, PagedAdamW optimizer, DataStream data, double initialEval)
    {
        Directory.CreateDirectory(CheckpointRoot);
        string name = $"step-{step:D8}";
        string final = Path.Combine(CheckpointRoot, name);
        string tmp = Path.Combine(CheckpointRoot, $".tmp-{name}-{Environment.ProcessId}");
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        try
        {
            WriteCheckpointFiles(tmp, step, optimizer, data, initialEval);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or QLoRA.Native.QLoraException)
        {
            // Nothing half-written stays behind (a disk that filled up, a directory that became unwritable).
            try { Directory.Delete(tmp, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw new IOException($"cannot write the checkpoint of step {step} into {CheckpointRoot}: {e.Message}", e);
        }
        // A checkpoint of the same step (a finished run resumed) is renamed away before it is deleted, so no
        // half-deleted directory ever carries a step-* name (recursive deletion is not atomic).
        if (Directory.Exists(final)) DeleteAtomically(final);
        Directory.Move(tmp, final);
        CrashTestHook.Phase("renamed", step);
        foreach (var old in Directory.GetDirectories(CheckpointRoot, "step-*").Order(StringComparer.Ordinal).SkipLast(_o.KeepCheckpoints))
            DeleteAtomically(old);
        CrashTestHook.Phase("end", step);
        Log?.Invoke($"checkpoint {final}");
    }

    private void WriteCheckpointFiles(string tmp, long step, PagedAdamW optimizer, DataStream data, double initialEval)
    {
        CrashTestHook.Phase("begin", step);
        PeftAdapter.Save(_lora, tmp, _o.BaseModelName, ScalarType.Float32);
        CrashTestHook.Phase("adapter", step);
        optimizer.Save(Path.Combine(tmp, "optimizer.bin"));
        CrashTestHook.Phase("optimizer", step);
        using (var rng = get_rng_state())
            Checkpoints.WriteBytes(Path.Combine(tmp, "rng.bin"), rng.data<byte>().ToArray());
        CrashTestHook.Phase("rng", step);
        var state = new JsonObject
        {
            ["step"] = step,
            ["epoch"] = data.Position.Epoch,
            ["batch_in_epoch"] = data.Position.Batch,
            ["seed"] = _o.Seed,
            ["steps"] = _o.Steps,
            ["batch_size"] = _o.BatchSize,
            ["grad_accum"] = _o.GradientAccumulation,
            ["train_examples"] = _train.Count,
            ["initial_eval_loss"] = double.IsNaN(initialEval) ? null : initialEval,
        };
        Checkpoints.WriteJson(Path.Combine(tmp, "trainer_state.json"), state);
        CrashTestHook.Phase("state", step);
    }

    /// <summary>Renames a checkpoint directory to a hidden name, then deletes it: a kill mid-delete leaves garbage, never a broken step-*.</summary>
    private static void DeleteAtomically(string dir)
    {
        string trash = Path.Combine(Path.GetDirectoryName(dir)!, $".del-{Path.GetFileName(dir)}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.Move(dir, trash);
        Directory.Delete(trash, true);
    }

    /// <summary>Removes what killed runs left: half-written (.tmp-*) and half-deleted (.del-*) checkpoint directories.</summary>
    private void RemoveDebris()
    {
        if (!Directory.Exists(CheckpointRoot)) return;
        foreach (var d in Directory.GetDirectories(CheckpointRoot, ".tmp-step-*").Concat(Directory.GetDirectories(CheckpointRoot, ".del-step-*")))
        {
            Log?.Invoke($"removing {d} (left by an interrupted run)");
            Directory.Delete(d, true);
        }
    }

    private CheckpointState LoadCheckpoint(string dir, PagedAdamW optimizer, DataStream data)
    {
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "trainer_state.json")))!.AsObject();
        void Same(string key, long value)
        {
            long saved = (long)state[key]!;
            if (saved != value)
                throw new InvalidOperationException($"{dir}: the checkpoint was written with {key} = {saved}, this run has {value}; resume with the same settings");
        }
        Same("seed", _o.Seed);
        Same("batch_size", _o.BatchSize);
        Same("grad_accum", _o.GradientAccumulation);
        Same("train_examples", _train.Count);
        using (var adapter = PeftAdapter.Read(dir))
        using (no_grad())
        {
            foreach (var (name, layer) in _lora.Layers)
            {
                if (!adapter.Weights.TryGetValue(name, out var w))
                    throw new InvalidDataException($"{dir}: the checkpoint has no adapter for {name}");
                layer.A.copy_(w.A);
                using var b = PeftAdapter.FromHuggingFaceRows(name, w.B, _lora.Model.Config);
                layer.B.copy_(b);
            }
        }
        optimizer.Load(Path.Combine(dir, "optimizer.bin"));
        byte[] rng = File.ReadAllBytes(Path.Combine(dir, "rng.bin"));
        using (var t = torch.tensor(rng, ScalarType.Byte)) set_rng_state(t);
        data.Seek(new DataPosition((int)state["epoch"]!, (int)state["batch_in_epoch"]!));
        double initial = state["initial_eval_loss"] is JsonValue v && v.TryGetValue(out double d) ? d : double.NaN;
        return new CheckpointState((long)state["step"]!, initial);
    }

    private void WriteEffectiveConfig()
    {
        var o = _o;
        var l = _lora.Options;
        var cfg = new JsonObject
        {
            ["base_model"] = o.BaseModelName,
            ["steps"] = o.Steps,
            ["batch_size"] = o.BatchSize,
            ["grad_accum"] = o.GradientAccumulation,
            ["lr"] = o.LearningRate,
            ["lr_schedule"] = o.Schedule.ToString().ToLowerInvariant(),
            ["warmup_steps"] = o.EffectiveWarmup,
            ["max_grad_norm"] = o.MaxGradNorm,
            ["weight_decay"] = o.WeightDecay,
            ["optimizer"] = o.EightBitOptimizer ? "paged_adamw_8bit" : "paged_adamw_32bit",
            ["pager_budget_bytes"] = o.PagerBudgetBytes,
            ["seed"] = o.Seed,
            ["gradient_checkpointing"] = o.GradientCheckpointing,
            ["group_by_length"] = o.GroupByLength,
            ["eval_every"] = o.EvalEvery,
            ["save_every"] = o.SaveEvery,
            ["compute_dtype"] = _lora.Model.ComputeDtype == ScalarType.BFloat16 ? "bf16" : "fp32",
            ["lora_r"] = l.Rank,
            ["lora_alpha"] = l.Alpha,
            ["lora_dropout"] = l.Dropout,
            ["use_rslora"] = l.UseRsLora,
            ["target_modules"] = new JsonArray(_lora.TargetModuleNames.Select(t => (JsonNode)t).ToArray()),
            ["trainable_parameters"] = _lora.TrainableParameterCount,
            ["train_examples"] = _train.Count,
            ["eval_examples"] = _eval.Count,
        };
        Checkpoints.WriteJson(Path.Combine(o.OutputDirectory, "trainer_config.json"), cfg);
    }
}
