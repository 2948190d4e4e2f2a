using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

using QLoRA.Adapters;
using QLoRA.Data;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Training;

using TorchSharp;

namespace QLoRA.Cli;

/// <summary>The training commands of CLI.md: finetune and merge.</summary>
internal static class TrainCommands
{
    /// <summary>Instructions whose greedy answers are shown before and after fine-tuning on the default task.</summary>
    public static readonly string[] DefaultSampleWords = ["Define the word telescope.", "Define the word kitchen.", "Define the word whisper."];

    public static void Add(RootCommand root, Option<bool> json, Option<bool> verbose)
    {
        root.Add(Finetune(json, verbose));
        root.Add(Merge(json, verbose));
    }

    private static void Log(string line) => Console.Error.WriteLine(line);

    private static void Print(JsonObject o) => Console.WriteLine(o.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));

    private static torch.ScalarType ParseDtype(string s, string flag) => s.ToLowerInvariant() switch
    {
        "fp32" or "float32" => torch.ScalarType.Float32,
        "bf16" or "bfloat16" => torch.ScalarType.BFloat16,
        _ => throw new ArgumentException($"{flag} {s}: expected fp32 or bf16"),
    };

    private static Command Finetune(Option<bool> json, Option<bool> verbose)
    {
        var model = new Option<string>("--model") { Description = "default (stories15M via npm), a llama2.c .bin file, or a Hugging Face model directory", DefaultValueFactory = _ => "default" };
        var tokenizer = new Option<string>("--tokenizer") { Description = "llama2.c models: the tokenizer.bin (default: next to the model)" };
        var data = new Option<string>("--data") { Description = "default (WordNet definitions, held-out eval split) or a .json/.jsonl/.txt file (Alpaca, input/output, chat messages, or text)", DefaultValueFactory = _ => "default" };
        var evalData = new Option<string>("--eval-data") { Description = "a separate evaluation file (default: hold out --eval-examples of --data)" };
        var format = new Option<string>("--format") { Description = "auto, alpaca, input-output, chat or text", DefaultValueFactory = _ => "auto" };
        var template = new Option<string>("--prompt-template") { Description = "compact or alpaca (the paper's preamble)", DefaultValueFactory = _ => "compact" };
        var outDir = new Option<string>("--out") { Description = "output directory: adapter, checkpoints, metrics.jsonl, tensorboard/, loss.png, trainer_config.json", DefaultValueFactory = _ => "qlora-out" };
        var quant = new Option<string>("--quant") { Description = "nf4 (QLoRA: NF4 + double quant), fp4, int4, or none (LoRA on the 16/32-bit base)", DefaultValueFactory = _ => "nf4" };
        var dtype = new Option<string>("--dtype") { Description = "compute dtype: fp32 or bf16", DefaultValueFactory = _ => "fp32" };
        var steps = new Option<int>("--steps") { Description = "optimizer steps", DefaultValueFactory = _ => 200 };
        var lr = new Option<double>("--lr") { Description = "peak learning rate", DefaultValueFactory = _ => 1e-3 };
        var schedule = new Option<string>("--lr-schedule") { Description = "constant (the paper's), linear or cosine (after warmup)", DefaultValueFactory = _ => "cosine" };
        var warmup = new Option<int?>("--warmup-steps") { Description = "linear warmup steps (default: 3% of --steps)" };
        var rank = new Option<int>("--rank") { Description = "LoRA rank r", DefaultValueFactory = _ => 64 };
        var alpha = new Option<double>("--alpha") { Description = "lora_alpha (scale alpha/r)", DefaultValueFactory = _ => 16 };
        var dropout = new Option<double>("--dropout") { Description = "LoRA dropout", DefaultValueFactory = _ => 0.05 };
        var rslora = new Option<bool>("--rslora") { Description = "scale alpha/sqrt(r) (rsLoRA)" };
        var targets = new Option<string>("--target-modules") { Description = "comma-separated layer names (default: all linear layers: q,k,v,o,gate,up,down)" };
        var batch = new Option<int>("--batch-size") { Description = "examples per micro-batch", DefaultValueFactory = _ => 16 };
        var accum = new Option<int>("--grad-accum") { Description = "micro-batches per optimizer step", DefaultValueFactory = _ => 1 };
        var seqLen = new Option<int>("--seq-len") { Description = "most tokens per sequence", DefaultValueFactory = _ => 256 };
        var maxSource = new Option<int>("--max-source-len") { Description = "most prompt tokens", DefaultValueFactory = _ => 192 };
        var maxTarget = new Option<int>("--max-target-len") { Description = "most response tokens", DefaultValueFactory = _ => 128 };
        var trainOnSource = new Option<bool>("--train-on-source") { Description = "take the loss on prompt tokens too" };
        var seed = new Option<int>("--seed") { Description = "seed of LoRA init, dropout and data order", DefaultValueFactory = _ => 42 };
        var resume = new Option<bool>("--resume") { Description = "continue from the newest checkpoint in --out" };
        var maxGradNorm = new Option<double>("--max-grad-norm") { Description = "global-norm clipping (0 = off)", DefaultValueFactory = _ => 0.3 };
        var weightDecay = new Option<double>("--weight-decay") { Description = "decoupled weight decay", DefaultValueFactory = _ => 0.0 };
        var optim = new Option<string>("--optim") { Description = "paged_adamw_32bit or paged_adamw_8bit", DefaultValueFactory = _ => "paged_adamw_32bit" };
        var pagerBudget = new Option<double?>("--pager-budget-mb") { Description = "keep optimizer states in the native pager with this RAM budget (MiB; spills to DIR/pager)" };
        var checkpointing = new Option<bool>("--gradient-checkpointing") { Description = "recompute decoder layers in backward (less activation memory)" };
        var noGroup = new Option<bool>("--no-group-by-length") { Description = "do not batch similar lengths together" };
        var evalEvery = new Option<int>("--eval-every") { Description = "evaluate every N steps (0: before and after only)", DefaultValueFactory = _ => 50 };
        var saveEvery = new Option<int>("--save-every") { Description = "checkpoint every N steps", DefaultValueFactory = _ => 50 };
        var evalExamples = new Option<int>("--eval-examples") { Description = "evaluation examples", DefaultValueFactory = _ => 200 };
        var maxTrain = new Option<int>("--max-train-examples") { Description = "most training examples (0 = all)", DefaultValueFactory = _ => 20000 };
        var adapterDtype = new Option<string>("--adapter-dtype") { Description = "dtype of adapter_model.safetensors: fp32 or bf16", DefaultValueFactory = _ => "fp32" };
        var samples = new Option<string[]>("--sample") { Description = "an instruction to answer (greedy) before and after training; repeatable", AllowMultipleArgumentsPerToken = false };
        var cmd = new Command("finetune", "QLoRA fine-tuning: LoRA adapters on a frozen 4-bit base; writes a PEFT adapter, checkpoints, metrics and a loss plot")
        {
            model, tokenizer, data, evalData, format, template, outDir, quant, dtype, steps, lr, schedule, warmup, rank, alpha, dropout, rslora,
            targets, batch, accum, seqLen, maxSource, maxTarget, trainOnSource, seed, resume, maxGradNorm, weightDecay, optim, pagerBudget,
            checkpointing, noGroup, evalEvery, saveEvery, evalExamples, maxTrain, adapterDtype, samples,
        };
        cmd.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            string optimName = r.GetValue(optim)!;
            if (optimName is not ("paged_adamw_32bit" or "paged_adamw_8bit"))
                throw new ArgumentException($"--optim {optimName}: expected paged_adamw_32bit or paged_adamw_8bit");
            var fmt = r.GetValue(format)! switch
            {
                "auto" => DataFormat.Auto, "alpaca" => DataFormat.Alpaca, "input-output" => DataFormat.InputOutput,
                "chat" => DataFormat.Chat, "text" => DataFormat.Text,
                var f => throw new ArgumentException($"--format {f}: expected auto, alpaca, input-output, chat or text"),
            };
            string dataArg = r.GetValue(data)!;
            string[] sampleArgs = r.GetValue(samples) ?? [];
            var settings = new FineTuneSettings
            {
                Model = r.GetValue(model)!,
                Tokenizer = r.GetValue(tokenizer),
                Data = dataArg,
                EvalData = r.GetValue(evalData),
                Format = fmt,
                PromptTemplate = r.GetValue(template)!,
                Quant = QuantSpec.Parse(r.GetValue(quant)!),
                ComputeDtype = ParseDtype(r.GetValue(dtype)!, "--dtype"),
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
                SampleInstructions = sampleArgs.Length > 0 ? sampleArgs : dataArg == "default" ? DefaultSampleWords : [],
                Trainer = new TrainerOptions
                {
                    OutputDirectory = Path.GetFullPath(r.GetValue(outDir)!),
                    Steps = r.GetValue(steps),
                    BatchSize = r.GetValue(batch),
                    GradientAccumulation = r.GetValue(accum),
                    LearningRate = r.GetValue(lr),
                    Schedule = LrSchedule.ParseKind(r.GetValue(schedule)!),
                    WarmupSteps = r.GetValue(warmup),
                    MaxGradNorm = r.GetValue(maxGradNorm),
                    WeightDecay = r.GetValue(weightDecay),
                    EightBitOptimizer = optimName == "paged_adamw_8bit",
                    PagerBudgetBytes = r.GetValue(pagerBudget) is { } mb ? (long)(mb * 1048576) : null,
                    Seed = r.GetValue(seed),
                    GradientCheckpointing = r.GetValue(checkpointing),
                    GroupByLength = !r.GetValue(noGroup),
                    EvalEvery = r.GetValue(evalEvery),
                    SaveEvery = r.GetValue(saveEvery),
                    Resume = r.GetValue(resume),
                    AdapterDtype = ParseDtype(r.GetValue(adapterDtype)!, "--adapter-dtype"),
                },
            };
            // Ctrl-C: finish the current step, write a checkpoint, exit; --resume continues.
            using var stop = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) =>
            {
                if (stop.IsCancellationRequested) return;   // a second Ctrl-C kills the process
                e.Cancel = true;
                stop.Cancel();
                Log("stopping after this step (checkpoint follows); press Ctrl-C again to abort");
            };
            Console.CancelKeyPress += onCancel;
            try
            {
                int total = settings.Trainer.Steps;
                var report = FineTuning.Run(settings, Log,
                    m => Log($"step {m.Step}/{total}  loss {m.Loss:F4}  lr {m.LearningRate:G3}  grad_norm {m.GradNorm:F3}  " +
                             $"{m.TokensPerSecond:F0} tok/s  rss {m.ResidentBytes / 1048576.0:F0} MiB"),
                    e => Log($"eval at step {e.Step}: loss {e.Loss:F4} over {e.Tokens} response tokens"),
                    stop.Token);
                var res = report.Result;
                Log(res.Stopped
                    ? $"stopped at step {res.Steps}; continue with --resume (checkpoint in {Path.Combine(report.OutputDirectory, "checkpoints")})"
                    : $"done: eval loss {res.InitialEvalLoss:F4} -> {res.FinalEvalLoss:F4}, {res.TokensPerSecond:F0} tokens/s, peak memory {res.PeakMemoryBytes / 1048576.0:F0} MiB; adapter in {report.OutputDirectory}");
                foreach (var s in report.Samples)
                    Log($"\n> {s.Instruction}\n  before: {s.Before}\n  after:  {s.After}");
                if (r.GetValue(json)) Print(report.ToJson());
                else Console.WriteLine(report.OutputDirectory);
                return 0;
            }
            finally
            {
                Console.CancelKeyPress -= onCancel;
            }
        }));
        return cmd;
    }

    private static Command Merge(Option<bool> json, Option<bool> verbose)
    {
        var model = new Option<string>("--model") { Description = "the base: default, a llama2.c .bin file, or a Hugging Face directory", DefaultValueFactory = _ => "default" };
        var tokenizer = new Option<string>("--tokenizer") { Description = "llama2.c models: the tokenizer.bin (default: next to the model)" };
        var adapter = new Option<string>("--adapter") { Description = "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)", Required = true };
        var outDir = new Option<string>("--out") { Description = "output Hugging Face model directory", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "fp32 or bf16 (the merged weights)", DefaultValueFactory = _ => "fp32" };
        var requant = new Option<string>("--requantize") { Description = "nf4: store the merged linear weights as NF4 + double quant (bitsandbytes layout) and report the error" };
        var cmd = new Command("merge", "Merge a LoRA adapter into its base: W + (alpha/r) B A, written as a Hugging Face safetensors model (fp32, bf16, or re-quantized NF4)")
        {
            model, tokenizer, adapter, outDir, dtype, requant,
        };
        cmd.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            var sw = Stopwatch.StartNew();
            var fmt = r.GetValue(requant) switch
            {
                null => ParseDtype(r.GetValue(dtype)!, "--dtype") == torch.ScalarType.BFloat16 ? MergedFormat.Bf16 : MergedFormat.Fp32,
                "nf4" => MergedFormat.Nf4,
                var q => throw new ArgumentException($"--requantize {q}: only nf4"),
            };
            string m = r.GetValue(model)!;
            string? tok = r.GetValue(tokenizer);
            if (m == "default")
            {
                var files = DefaultAssets.FetchModel(Log);
                m = files.ModelPath;
                tok ??= files.TokenizerPath;
            }
            string output = Path.GetFullPath(r.GetValue(outDir)!);
            using var loaded = ModelLoader.Load(m, new ModelLoadOptions { Quant = QuantSpec.None, TokenizerPath = tok, RotateHalf = true, Log = Log });
            var lora = PeftAdapter.Load(loaded.Model, r.GetValue(adapter)!);
            var result = AdapterMerge.Write(lora, output, fmt);
            Checkpoints.CopyTokenizer(loaded, output, tok);
            Log($"merged {result.MergedLayers} adapted layers (scale {lora.Options.Scale:G4}) into {output}: {result.Tensors} tensors ({fmt})" +
                (result.Nf4RelativeError is { } e ? $"; NF4 re-quantization relative error {e:P2}" : ""));
            if (r.GetValue(json))
            {
                var o = new JsonObject
                {
                    ["out"] = output, ["tensors"] = result.Tensors, ["merged_layers"] = result.MergedLayers,
                    ["dtype"] = fmt.ToString().ToLowerInvariant(), ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 2),
                };
                if (result.Nf4RelativeError is { } err) o["nf4_relative_error"] = Math.Round(err, 6);
                Print(o);
            }
            else Console.WriteLine(output);
            return 0;
        }));
        return cmd;
    }
}
