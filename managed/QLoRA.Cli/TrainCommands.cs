using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;

using QLoRA.Adapters;
using QLoRA.Data;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Training;

namespace QLoRA.Cli;

/// <summary>The training commands of CLI.md: finetune and merge.</summary>
internal static class TrainCommands
{
    /// <summary>Instructions whose greedy answers are shown before and after fine-tuning on the default task.</summary>
    public static readonly string[] DefaultSampleWords = ["Define the word telescope.", "Define the word kitchen.", "Define the word whisper."];

    /// <summary>The effective options of a run, saved in its output folder (loadable with --config; read by --resume).</summary>
    public const string SavedConfig = "qlora_config.json";

    public static void Add(App app)
    {
        app.Add(Finetune(app),
            ("finetune", "the main job: stories15M frozen in NF4 + double quant, LoRA on every linear layer, WordNet definitions; output in ./qlora-out"),
            ("finetune --model ./my-hf-model --data my.jsonl --out run1 --steps 300", "your model and data (Alpaca, input/output, chat JSON/JSONL, or plain text)"),
            ("finetune --out run1 --resume", "continue a stopped run (Ctrl-C writes a checkpoint) with its saved settings"),
            ("finetune --config run.json --lr 2e-4", "options from a JSON file; flags win"),
            ("finetune --quant none --rank 16 --alpha 32 --out lora-fp32 --json", "plain LoRA on the 32-bit base, reporting losses as JSON"));
        app.Add(Merge(app),
            ("merge --adapter run1 --out merged", "base + (alpha/r) B A as a 32-bit Hugging Face safetensors model"),
            ("merge --model ./my-hf-model --adapter run1 --out merged-bf16 --dtype bf16", "your base in bf16"),
            ("merge --adapter run1 --out merged-nf4 --requantize nf4 --json", "re-quantized to NF4 + double quant, with the error it adds"));
    }

    // ------------------------------------------------------------------ finetune

    private static Command Finetune(App app)
    {
        var model = ModelCommands.ModelOption();
        var tokenizer = ModelCommands.TokenizerOption();
        var data = Flags.Text("--data", "default (WordNet definitions, held-out eval split) or a .json/.jsonl/.txt file (Alpaca, input/output, chat messages, or text)",
                              "default", helpName: "default|FILE");
        var evalData = Flags.OptionalText("--eval-data", "a separate evaluation file (default: hold out --eval-examples of --data)", "FILE");
        var format = Flags.Choice("--format", "record layout of --data", "auto", "auto", "alpaca", "input-output", "chat", "text");
        var template = Flags.Choice("--prompt-template", "compact, or alpaca (the paper's preamble)", "compact", "compact", "alpaca");
        var outDir = Flags.Text("--out", "output folder: adapter, checkpoints/, metrics.jsonl, tensorboard/, loss.png, qlora_config.json", "qlora-out", helpName: "DIR");
        var quant = Flags.Choice("--quant", "frozen base: nf4 (QLoRA: NF4 + double quant), fp4, int4, or none (LoRA on the 16/32-bit base)", "nf4", "nf4", "fp4", "int4", "none");
        var dtype = ModelCommands.DtypeOption("compute dtype");
        var steps = Flags.Int("--steps", "optimizer steps", 200, 1);
        var lr = Flags.Number("--lr", "peak learning rate", 1e-3, 0, minExclusive: true);
        var schedule = Flags.Choice("--lr-schedule", "after warmup: constant (the paper's), linear or cosine", "cosine", "constant", "linear", "cosine");
        var warmup = Flags.OptionalInt<int>("--warmup-steps", "linear warmup steps (default: 3% of --steps)", 0);
        var rank = Flags.Int("--rank", "LoRA rank r", 64, 1);
        var alpha = Flags.Number("--alpha", "lora_alpha (scale alpha/r)", 16, 0, minExclusive: true);
        var dropout = Flags.Number("--dropout", "LoRA dropout", 0.05, 0, max: 1, maxExclusive: true);
        var rslora = Flags.Switch("--rslora", "scale alpha/sqrt(r) (rsLoRA)");
        var targets = Flags.OptionalText("--target-modules", "comma-separated layer names (default: all linear layers: q,k,v,o,gate,up,down)", "LIST");
        var batch = Flags.Int("--batch-size", "examples per micro-batch", 16, 1);
        var accum = Flags.Int("--grad-accum", "micro-batches per optimizer step", 1, 1);
        var seqLen = Flags.Int("--seq-len", "most tokens per sequence", 256, 2);
        var maxSource = Flags.Int("--max-source-len", "most prompt tokens", 192, 1);
        var maxTarget = Flags.Int("--max-target-len", "most response tokens", 128, 1);
        var trainOnSource = Flags.Switch("--train-on-source", "take the loss on prompt tokens too");
        var seed = Flags.Int("--seed", "seed of LoRA init, dropout and data order", 42, 0);
        var resume = Flags.Switch("--resume", $"continue from the newest checkpoint in --out, with the settings saved in its {SavedConfig} (flags given now win)");
        var overwrite = Flags.Switch("--overwrite", "start over in an --out that holds a run (its checkpoints, metrics and adapter are deleted)");
        var maxGradNorm = Flags.Number("--max-grad-norm", "global-norm clipping (0 = off)", 0.3, 0);
        var weightDecay = Flags.Number("--weight-decay", "decoupled weight decay", 0.0, 0);
        var optim = Flags.Choice("--optim", "optimizer states: 32-bit or 8-bit blockwise", "paged_adamw_32bit", "paged_adamw_32bit", "paged_adamw_8bit");
        var pagerBudget = Flags.OptionalNumber("--pager-budget-mb", "keep optimizer states in the native pager with this RAM budget (MiB; spills to DIR/pager)", 0, minExclusive: true);
        var checkpointing = Flags.Switch("--gradient-checkpointing", "recompute decoder layers in backward (less activation memory)");
        var noGroup = Flags.Switch("--no-group-by-length", "do not batch similar lengths together");
        var evalEvery = Flags.Int("--eval-every", "evaluate every N steps (0: before and after only)", 50, 0);
        var saveEvery = Flags.Int("--save-every", "checkpoint every N steps (0: only at the end or when stopped)", 50, 0);
        var evalExamples = Flags.Int("--eval-examples", "evaluation examples", 200, 0);
        var maxTrain = Flags.Int("--max-train-examples", "most training examples (0 = all)", 20000, 0);
        var adapterDtype = Flags.Choice("--adapter-dtype", "dtype of adapter_model.safetensors", "fp32", "fp32", "bf16");
        var samples = new Option<string[]>("--sample")
        {
            Description = "an instruction to answer (greedy) before and after training; repeatable (default data: three words)", HelpName = "TEXT",
        };
        var noSamples = Flags.Switch("--no-samples", "no sample generations before and after training");
        var logEvery = Flags.Int("--log-every", "without a terminal: a log line every N steps", 1, 1);
        var cmd = new Command("finetune", "QLoRA fine-tuning: LoRA adapters on a frozen 4-bit base; writes a PEFT adapter, checkpoints, metrics and a loss plot. " +
                                          "Ctrl-C stops after the current step with a checkpoint (exit code 130); --resume continues")
        {
            model, tokenizer, data, evalData, format, template, outDir, quant, dtype, steps, lr, schedule, warmup, rank, alpha, dropout, rslora,
            targets, batch, accum, seqLen, maxSource, maxTarget, trainOnSource, seed, resume, overwrite, maxGradNorm, weightDecay, optim, pagerBudget,
            checkpointing, noGroup, evalEvery, saveEvery, evalExamples, maxTrain, adapterDtype, samples, noSamples, logEvery,
        };
        app.ImplicitConfig(cmd, r => r.GetValue(resume) && Path.Combine(r.GetValue(outDir)!, SavedConfig) is var p && File.Exists(p) ? p : null);
        var notSaved = new HashSet<Option> { resume, overwrite };
        var paths = new HashSet<Option> { model, tokenizer, data, evalData, outDir };

        cmd.SetAction(r => app.Run(r, ui =>
        {
            string output = Path.GetFullPath(r.GetValue(outDir)!);
            string dataArg = r.GetValue(data)!;
            foreach (var (flag, path) in new[] { ("--data", dataArg), ("--eval-data", r.GetValue(evalData)), ("--tokenizer", r.GetValue(tokenizer)) })
                if (path is not null && path != "default" && !File.Exists(path)) throw new FileNotFoundException($"{flag} {path}: no such file");
            string modelArg = r.GetValue(model)!;
            if (modelArg != "default" && !File.Exists(modelArg) && !Directory.Exists(modelArg))
                throw new FileNotFoundException($"--model {modelArg}: no such file or directory (expected default, a llama2.c .bin file or a Hugging Face model directory)");
            string[] sampleArgs = r.GetValue(samples) ?? [];
            if (r.GetValue(noSamples) && sampleArgs.Length > 0) throw new UsageException("--sample and --no-samples contradict each other");

            try
            {
                Directory.CreateDirectory(output);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new IOException($"--out {output}: cannot create the folder ({Errors.OneLine(e)})", e);
            }
            using var runLock = FileLock.TryAcquire(Path.Combine(output, ".qlora.lock"))
                ?? throw new IOException($"--out {output}: another qlora finetune is writing to this folder (it holds {Path.Combine(output, ".qlora.lock")})");
            bool resuming = r.GetValue(resume);
            PrepareOutput(output, resuming, r.GetValue(overwrite), ui);
            if (resuming && r.GetResult(app.Config) is null && File.Exists(Path.Combine(output, SavedConfig)))
                ui.Log($"resuming with the settings saved in {Path.Combine(output, SavedConfig)} (flags given now win)");
            Checkpoints.WriteJson(Path.Combine(output, SavedConfig),
                                  ConfigFile.Effective(r, app.Settable(cmd).Where(o => !notSaved.Contains(o)), paths));

            var settings = new FineTuneSettings
            {
                Model = modelArg,
                Tokenizer = r.GetValue(tokenizer),
                Data = dataArg,
                EvalData = r.GetValue(evalData),
                Format = r.GetValue(format)! switch
                {
                    "alpaca" => DataFormat.Alpaca, "input-output" => DataFormat.InputOutput, "chat" => DataFormat.Chat, "text" => DataFormat.Text, _ => DataFormat.Auto,
                },
                PromptTemplate = r.GetValue(template)!,
                Quant = QuantSpec.Parse(r.GetValue(quant)!),
                ComputeDtype = ModelCommands.ParseDtype(r.GetValue(dtype)!),
                Lora = new LoraOptions
                {
                    Rank = r.GetValue(rank), Alpha = r.GetValue(alpha), Dropout = r.GetValue(dropout), UseRsLora = r.GetValue(rslora),
                    TargetModules = r.GetValue(targets) is { } tm ? tm.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : null,
                },
                SeqLen = r.GetValue(seqLen),
                MaxSourceTokens = r.GetValue(maxSource),
                MaxTargetTokens = r.GetValue(maxTarget),
                TrainOnSource = r.GetValue(trainOnSource),
                EvalExamples = r.GetValue(evalExamples),
                MaxTrainExamples = r.GetValue(maxTrain),
                SampleInstructions = r.GetValue(noSamples) ? [] : sampleArgs.Length > 0 ? sampleArgs : dataArg == "default" ? DefaultSampleWords : [],
                Trainer = new TrainerOptions
                {
                    OutputDirectory = output,
                    Steps = r.GetValue(steps),
                    BatchSize = r.GetValue(batch),
                    GradientAccumulation = r.GetValue(accum),
                    LearningRate = r.GetValue(lr),
                    Schedule = LrSchedule.ParseKind(r.GetValue(schedule)!),
                    WarmupSteps = r.GetValue(warmup),
                    MaxGradNorm = r.GetValue(maxGradNorm),
                    WeightDecay = r.GetValue(weightDecay),
                    EightBitOptimizer = r.GetValue(optim) == "paged_adamw_8bit",
                    PagerBudgetBytes = r.GetValue(pagerBudget) is { } mb ? (long)(mb * 1048576) : null,
                    Seed = r.GetValue(seed),
                    GradientCheckpointing = r.GetValue(checkpointing),
                    GroupByLength = !r.GetValue(noGroup),
                    EvalEvery = r.GetValue(evalEvery),
                    SaveEvery = r.GetValue(saveEvery),
                    Resume = resuming,
                    AdapterDtype = ModelCommands.ParseDtype(r.GetValue(adapterDtype)!),
                },
            };
            return Train(ui, settings, r.GetValue(logEvery));
        }));
        return cmd;
    }

    // A fresh run refuses an --out that holds one (unless --overwrite); stale temporary checkpoint folders of a run
    // that was killed while writing go (this process holds the folder's lock, so nothing else is writing them).
    private static void PrepareOutput(string output, bool resuming, bool overwrite, Ui ui)
    {
        string checkpoints = Path.Combine(output, "checkpoints");
        if (Directory.Exists(checkpoints))
            foreach (string tmp in Directory.GetDirectories(checkpoints, ".tmp-*"))
            {
                Directory.Delete(tmp, true);
                ui.Log($"removed {tmp} (an unfinished checkpoint of a run that was killed)");
            }
        if (resuming) return;
        string? latest = Trainer.LatestCheckpoint(checkpoints);
        bool adapter = File.Exists(Path.Combine(output, PeftAdapter.ConfigFile));
        if (latest is null && !adapter) return;
        if (!overwrite)
            throw new IOException($"--out {output} already holds a run ({(latest is not null ? Path.GetFileName(latest) : "an adapter")}); " +
                                  "continue it with --resume, or start over with --overwrite, or pick another --out");
        foreach (string dir in new[] { checkpoints, Path.Combine(output, "tensorboard"), Path.Combine(output, "pager") })
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        foreach (string file in new[] { "metrics.jsonl", "loss.png", "trainer_config.json", PeftAdapter.ConfigFile, PeftAdapter.WeightsFile })
            File.Delete(Path.Combine(output, file));
        ui.Log($"--overwrite: removed the previous run's checkpoints, metrics and adapter from {output}");
    }

    // Runs the job under the progress display; Ctrl-C (after the first step) stops it with a checkpoint: exit code 130.
    private static int Train(Ui ui, FineTuneSettings settings, int logEvery)
    {
        string output = settings.Trainer.OutputDirectory;
        int total = settings.Trainer.Steps;
        using var stop = new StopSignal(ui.Notice);
        var stepTimes = new List<double>();
        var report = ui.Progress(work => FineTuning.Run(settings, ui.Log,
            m =>
            {
                stop.Arm("finishing the current step, then writing a checkpoint");
                stepTimes.Add(m.Seconds);
                double eta = (total - m.Step) * stepTimes.TakeLast(20).Average();
                string mem = $"{m.ResidentBytes / 1048576.0:F0} MiB";
                work.Bar("train", $"step {m.Step}/{total} · loss {m.Loss:F4} · {m.TokensPerSecond:F0} tok/s · {mem}", m.Step, total);
                if (!work.IsLive && (m.Step % logEvery == 0 || m.Step == total))
                    ui.Log($"step {m.Step}/{total}  loss {m.Loss:F4}  lr {m.LearningRate:G3}  grad_norm {m.GradNorm:F3}  " +
                           $"{m.TokensPerSecond:F0} tok/s  eta {TimeSpan.FromSeconds(Math.Round(eta)):c}  rss {mem}");
            },
            e => ui.Log($"eval at step {e.Step}: loss {e.Loss:F4} over {e.Tokens} response tokens"),
            stop.Token));
        var res = report.Result;
        var json = report.ToJson();
        if (res.Stopped)
        {
            string resume = $"qlora finetune --out {Quote(output)} --resume";
            json["resume"] = resume;
            ui.Result(json, null);
            string? ckpt = Trainer.LatestCheckpoint(Path.Combine(output, "checkpoints"));
            ui.Notice($"qlora: interrupted at step {res.Steps} of {total}; checkpoint {ckpt}; continue with: {resume}");
            return ExitCode.Interrupted;
        }
        ui.Log($"done: eval loss {res.InitialEvalLoss:F4} -> {res.FinalEvalLoss:F4}, {res.TokensPerSecond:F0} tokens/s, " +
               $"peak memory {res.PeakMemoryBytes / 1048576.0:F0} MiB; adapter in {report.OutputDirectory}");
        foreach (var s in report.Samples)
            ui.Log($"\n> {s.Instruction}\n  before: {s.Before}\n  after:  {s.After}");
        ui.Result(json, report.OutputDirectory);
        return ExitCode.Ok;
    }

    private static string Quote(string path) => path.Any(c => char.IsWhiteSpace(c) || c is '\'' or '"' or '$' or '\\') ? $"'{path.Replace("'", "'\\''")}'" : path;

    // ------------------------------------------------------------------ merge

    private static Command Merge(App app)
    {
        var model = ModelCommands.ModelOption();
        var tokenizer = ModelCommands.TokenizerOption();
        var adapter = Flags.Text("--adapter", "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)", required: true, helpName: "DIR");
        var outDir = Flags.Text("--out", "output Hugging Face model directory", required: true, helpName: "DIR");
        var dtype = ModelCommands.DtypeOption("dtype of the merged weights");
        var requant = Flags.OptionalChoice("--requantize", "store the merged linear weights as NF4 + double quant (bitsandbytes layout) and report the error", "nf4");
        var cmd = new Command("merge", "Merge a LoRA adapter into its base: W + (alpha/r) B A, written as a Hugging Face safetensors model (fp32, bf16, or re-quantized NF4)")
        {
            model, tokenizer, adapter, outDir, dtype, requant,
        };
        cmd.SetAction(r => app.Run(r, ui =>
        {
            var sw = Stopwatch.StartNew();
            var fmt = r.GetValue(requant) is not null ? MergedFormat.Nf4
                : r.GetValue(dtype) == "bf16" ? MergedFormat.Bf16 : MergedFormat.Fp32;
            string adapterDir = r.GetValue(adapter)!;
            if (!Directory.Exists(adapterDir)) throw new DirectoryNotFoundException($"--adapter {adapterDir}: no such directory");
            string m = r.GetValue(model)!;
            string? tok = r.GetValue(tokenizer);
            if (m == "default")
            {
                var files = ui.Progress(_ => DefaultAssets.FetchModel(ui.Log));
                m = files.ModelPath;
                tok ??= files.TokenizerPath;
            }
            string output = Path.GetFullPath(r.GetValue(outDir)!);
            using var loaded = ModelCommands.Load(ui, m, new ModelLoadOptions { Quant = QuantSpec.None, TokenizerPath = tok, RotateHalf = true });
            var lora = PeftAdapter.Load(loaded.Model, adapterDir);
            ui.Log($"merging {lora.Layers.Count} adapted layers into {output} ({fmt})");
            var result = ui.Progress(_ => AdapterMerge.Write(lora, output, fmt));
            Checkpoints.CopyTokenizer(loaded, output, tok);
            ui.Log($"merged {result.MergedLayers} adapted layers (scale {lora.Options.Scale:G4}) into {output}: {result.Tensors} tensors ({fmt})" +
                   (result.Nf4RelativeError is { } e ? $"; NF4 re-quantization relative error {e:P2}" : ""));
            var o = new JsonObject
            {
                ["out"] = output, ["tensors"] = result.Tensors, ["merged_layers"] = result.MergedLayers,
                ["dtype"] = fmt.ToString().ToLowerInvariant(), ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 2),
            };
            if (result.Nf4RelativeError is { } err) o["nf4_relative_error"] = Math.Round(err, 6);
            ui.Result(o, output);
            return ExitCode.Ok;
        }));
        return cmd;
    }
}
