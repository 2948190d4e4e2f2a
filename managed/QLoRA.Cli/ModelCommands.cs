using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;

using QLoRA.Evaluation;
using QLoRA.Generation;
using QLoRA.IO;
using QLoRA.Models;
using QLoRA.Reports;
using QLoRA.Tokenization;

using TorchSharp;

namespace QLoRA.Cli;

/// <summary>The inference commands of CLI.md: quantize, eval, generate, inspect (bench: <see cref="BenchCommands"/>).</summary>
internal static class ModelCommands
{
    public static void Add(App app)
    {
        app.Add(Quantize(app),
            ("quantize --out stories15M-nf4", "stories15M to a bitsandbytes NF4 + double-quant Hugging Face directory"),
            ("quantize --model ./my-hf-model --out ./my-hf-model-nf4 --json", "your Hugging Face checkpoint (16/32-bit), reporting bits/param as JSON"),
            ("quantize --model ./my-hf-model --out ./fp4 --quant fp4 --blocksize 128 --double-quant false", "FP4, 128 weights per scale, fp32 scales"));
        app.Add(Eval(app),
            ("eval --data moby-dick.txt --max-tokens 4096", "perplexity of stories15M (NF4) on the first 4096 tokens of a text"),
            ("eval --model ./my-hf-model --data notes.txt --quant none --json", "your model in 16/32-bit, as JSON"),
            ("eval --data held-out.txt --adapter run1", "with a trained LoRA adapter applied"));
        app.Add(Generate(app),
            ("generate --prompt \"Once upon a time\" --temperature 0", "greedy continuation from stories15M in NF4 (tokens stream to stdout)"),
            ("generate --adapter run1 --chat --prompt \"Define the word kitchen.\" --max-new-tokens 40", "an instruction through the chat template, with a trained adapter"),
            ("generate --model ./my-hf-model --prompt \"Hello\" --temperature 0.7 --top-p 0.9 --seed 7 --json", "sampled, reproducible, as JSON"));
        app.Add(Inspect(app),
            ("inspect ./my-hf-model-nf4", "tensors, dtypes, shapes, 4-bit layers and bytes of a checkpoint"),
            ("inspect run1/adapter_model.safetensors --all", "every tensor of a file"),
            ("inspect ~/.cache/qlora/models/stories15M/model.bin --json", "a llama2.c checkpoint, as JSON"));
        var probe = new Command("load-probe", "(internal) load a model directory with NF4 and print peak memory as JSON") { Hidden = true };
        var probeDir = new Argument<string>("dir");
        probe.Add(probeDir);
        probe.SetAction(r => app.Run(r, ui =>
        {
            Console.Out.WriteLine(Ui.JsonLine(ModelsReport.RunLoadProbe(r.GetValue(probeDir)!)));
            return ExitCode.Ok;
        }));
        app.Root.Add(probe);
    }

    // ------------------------------------------------------------------ shared options

    public static Option<string> ModelOption() => Flags.Text("--model",
        "default (stories15M, fetched once with npm), a llama2.c .bin file, or a Hugging Face model directory (16/32-bit or bitsandbytes 4-bit)",
        "default", helpName: "default|FILE|DIR");

    public static Option<string> DtypeOption(string what = "compute dtype of activations and 16/32-bit weights") =>
        Flags.Choice("--dtype", what, "fp32", "fp32", "bf16");

    public static Option<string?> TokenizerOption() =>
        Flags.OptionalText("--tokenizer", "llama2.c models: the tokenizer.bin (default: tokenizer.bin next to the model)", "FILE");

    private static Option<string?> AdapterOption() =>
        Flags.OptionalText("--adapter", "a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) to apply to the model", "DIR");

    public static torch.ScalarType ParseDtype(string s) => s == "bf16" ? torch.ScalarType.BFloat16 : torch.ScalarType.Float32;

    /// <summary>Loads a model under a progress display (a bar over its layers).</summary>
    public static LoadedModel Load(Ui ui, string model, ModelLoadOptions options) => ui.Progress(work =>
        ModelLoader.Load(model, options with
        {
            Log = ui.Log,
            LayerLoaded = (k, n) => work.Bar("load", $"load layer {k}/{n}", k, n),
        }));

    // Puts a PEFT adapter on the loaded model (names and shapes checked against it first).
    private static void ApplyAdapter(Ui ui, LoadedModel loaded, string? dir)
    {
        if (dir is null) return;
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"--adapter {dir}: no such directory");
        var lora = QLoRA.Adapters.PeftAdapter.Load(loaded.Model, dir, loaded.Model.ComputeDtype);
        ui.Log($"adapter {dir}: r={lora.Options.Rank}, alpha={lora.Options.Alpha} on {lora.Layers.Count} layers");
    }

    private static double Round(double v, int digits = 4) => Math.Round(v, digits);

    // ------------------------------------------------------------------ quantize

    private static Command Quantize(App app)
    {
        var model = ModelOption();
        var tokenizer = TokenizerOption();
        var outDir = Flags.Text("--out", "output directory (created): model.safetensors, config.json with quantization_config, tokenizer files", required: true, helpName: "DIR");
        var quant = Flags.Choice("--quant", "4-bit data type (bitsandbytes has no Int4 layout)", "nf4", "nf4", "fp4");
        var block = Flags.Check(Flags.Int("--blocksize", "weights per block scale: a power of two in [32, 4096]", 64, 32, 4096),
                                v => (v & (v - 1)) == 0 ? null : "must be a power of two");
        var dq = Flags.Switch("--double-quant", "8-bit block scales (double quantization): 4.127 instead of 4.5 bits/param at block 64", defaultValue: true);
        dq.HelpName = "true|false";
        var dtype = DtypeOption();
        var cmd = new Command("quantize", "Write a bitsandbytes 4-bit Hugging Face directory (model.safetensors, config.json with quantization_config, tokenizer files)")
        {
            model, tokenizer, outDir, quant, block, dq, dtype,
        };
        cmd.SetAction(r => app.Run(r, ui =>
        {
            var sw = Stopwatch.StartNew();
            var spec = QuantSpec.Parse(r.GetValue(quant)!, r.GetValue(block), r.GetValue(dq));
            string output = Path.GetFullPath(r.GetValue(outDir)!);
            string? tok = r.GetValue(tokenizer);
            string m = r.GetValue(model)!;
            if (m == "default")
            {
                var files = ui.Progress(_ => DefaultAssets.FetchModel(ui.Log));
                m = files.ModelPath;
                tok ??= files.TokenizerPath;
            }
            using var loaded = Load(ui, m, new ModelLoadOptions { Quant = spec, ComputeDtype = ParseDtype(r.GetValue(dtype)!), TokenizerPath = tok, RotateHalf = true });
            ui.Log($"writing {output}");
            var written = ui.Progress(_ => Checkpoints.WriteBitsAndBytes(loaded, output, tok));
            ui.Log($"wrote {output}: {written.Tensors} tensors, {written.Bytes / 1048576.0:F2} MiB, {written.BitsPerParam:F3} bits/param over {written.QuantizedParams:N0} linear weights ({spec.Name})");
            ui.Result(new JsonObject
            {
                ["out"] = output,
                ["params"] = written.QuantizedParams,
                ["bytes"] = written.Bytes,
                ["bits_per_param"] = Round(written.BitsPerParam),
                ["quant"] = spec.Name,
                ["tensors"] = written.Tensors,
                ["seconds"] = Round(sw.Elapsed.TotalSeconds, 2),
            }, output);
            return ExitCode.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ eval

    private static Command Eval(App app)
    {
        var model = ModelOption();
        var tokenizer = TokenizerOption();
        var data = Flags.Text("--data", "UTF-8 text file to compute perplexity on", required: true, helpName: "FILE");
        var quant = Flags.Choice("--quant", "linear weights: none (16/32-bit), nf4, fp4 or int4 (a bitsandbytes checkpoint: as stored, or none)", "nf4", "none", "nf4", "fp4", "int4");
        var maxTokens = Flags.OptionalInt<long>("--max-tokens", "evaluate only the first N tokens of the text", 2);
        var window = Flags.OptionalInt<int>("--window", "tokens per forward pass (default: the model's context length)", 2);
        var stride = Flags.OptionalInt<int>("--stride", "tokens between window starts (default: half the window); each token is scored once", 1);
        var dtype = DtypeOption();
        var adapter = AdapterOption();
        var cmd = new Command("eval", "Perplexity of the model on a UTF-8 text file (sliding window)")
        {
            model, tokenizer, data, quant, maxTokens, window, stride, dtype, adapter,
        };
        cmd.SetAction(r => app.Run(r, ui =>
        {
            string path = r.GetValue(data)!;
            if (!File.Exists(path)) throw new FileNotFoundException($"--data {path}: no such file");
            string text;
            try
            {
                text = File.ReadAllText(path, new System.Text.UTF8Encoding(false, true));
            }
            catch (System.Text.DecoderFallbackException e)
            {
                throw new InvalidDataException($"--data {path}: not valid UTF-8 (byte {e.Index} of an invalid sequence); save it as UTF-8", e);
            }
            var spec = QuantSpec.Parse(r.GetValue(quant)!);
            using var loaded = Load(ui, r.GetValue(model)!, new ModelLoadOptions
            {
                Quant = spec, ComputeDtype = ParseDtype(r.GetValue(dtype)!), TokenizerPath = r.GetValue(tokenizer),
            });
            ApplyAdapter(ui, loaded, r.GetValue(adapter));
            int context = loaded.Model.Config.MaxPositions;
            int win = r.GetValue(window) ?? context;
            if (win > context) throw new UsageException($"--window {win}: must be at most {context} (the model's context)");
            int str = r.GetValue(stride) ?? Math.Max(1, win / 2);
            if (str > win) throw new UsageException($"--stride {str}: must be at most the window ({win})");
            var result = ui.Progress(work => Perplexity.OfText(loaded.Model, loaded.RequireTokenizer(), text, win, str, r.GetValue(maxTokens), ui.Log,
                (scored, total) => work.Bar("eval", $"eval {scored}/{total} tokens", scored, total)));
            ui.Result(new JsonObject
            {
                ["perplexity"] = Round(result.Perplexity, 6),
                ["tokens"] = result.Tokens,
                ["quant"] = loaded.Quant.Name,
                ["mean_nll"] = Round(result.MeanNll, 6),
                ["window"] = win,
                ["stride"] = str,
                ["windows"] = result.Windows,
                ["seconds"] = Round(result.Seconds, 2),
                ["tokens_per_second"] = Round(result.TokensPerSecond, 1),
            }, $"perplexity {result.Perplexity:F4} over {result.Tokens} tokens ({loaded.Quant.Name}, window {win}, stride {str}, {result.Seconds:F1} s)");
            return ExitCode.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ generate

    private static Command Generate(App app)
    {
        var model = ModelOption();
        var tokenizer = TokenizerOption();
        var prompt = Flags.Text("--prompt", "the prompt text", required: true, helpName: "TEXT");
        var maxNew = Flags.Int("--max-new-tokens", "tokens to generate at most", 128, 1);
        var temperature = Flags.Number("--temperature", "sampling temperature; 0 = greedy", 0.8, 0);
        var topP = Flags.Number("--top-p", "nucleus sampling: keep the most likely tokens holding this much probability (1 = off)", 0.95, 0, minExclusive: true, max: 1);
        var topK = Flags.Int("--top-k", "keep the k most likely tokens (0 = off)", 0, 0);
        var seed = Flags.Int<ulong>("--seed", "sampling seed (the same seed gives the same text)", 42UL, 0UL);
        var quant = Flags.Choice("--quant", "linear weights: none (16/32-bit), nf4, fp4 or int4", "nf4", "none", "nf4", "fp4", "int4");
        var int8 = Flags.Switch("--int8-activations", "decode steps round the 4-bit layers' activations to 8 bits, as llama.cpp does (faster on AVX512-VNNI CPUs, approximate)");
        var chat = Flags.Switch("--chat", "format the prompt as an instruction with the model's chat template");
        var template = Flags.OptionalChoice("--template", "chat template to use with --chat (default: the model's)", "alpaca", "llama2", "llama3", "chatml");
        var dtype = DtypeOption();
        var adapter = AdapterOption();
        var cmd = new Command("generate", "Generate text (tokens stream to stdout; with --json to stderr, the result is JSON); --temperature 0 is greedy")
        {
            model, tokenizer, prompt, maxNew, temperature, topP, topK, seed, quant, int8, chat, template, dtype, adapter,
        };
        cmd.SetAction(r => app.Run(r, ui =>
        {
            var opts = new SamplingOptions
            {
                MaxNewTokens = r.GetValue(maxNew), Temperature = r.GetValue(temperature), TopP = r.GetValue(topP), TopK = r.GetValue(topK), Seed = r.GetValue(seed),
                Int8Activations = r.GetValue(int8),
            }.Validate();
            using var loaded = Load(ui, r.GetValue(model)!, new ModelLoadOptions
            {
                Quant = QuantSpec.Parse(r.GetValue(quant)!), ComputeDtype = ParseDtype(r.GetValue(dtype)!), TokenizerPath = r.GetValue(tokenizer),
            });
            ApplyAdapter(ui, loaded, r.GetValue(adapter));
            var tok = loaded.RequireTokenizer();
            string text = r.GetValue(prompt)!;
            List<int> ids;
            if (r.GetValue(chat))
            {
                var t = r.GetValue(template) is { } name ? ChatTemplate.ByName(name) : tok.ChatTemplate;
                ids = t.Encode(tok, t.FormatInstruction(text));
                ui.Log($"chat template: {t.Name}");
            }
            else ids = tok.Encode(text);
            // The text streams to stdout, or (with --json, whose stdout is the result) to stderr unless --quiet.
            TextWriter? stream = !ui.Json ? Console.Out : ui.Quiet ? null : Console.Error;
            if (!r.GetValue(chat)) stream?.Write(text);
            var gen = new TextGenerator(loaded.Model, tok);
            var result = gen.Generate(ids, opts, t =>
            {
                if (t.IsEos || stream is null) return;
                stream.Write(t.Text);
                stream.Flush();
            });
            stream?.WriteLine();
            ui.Log($"{result.Tokens.Count} tokens, {result.TokensPerSecond:F1} tokens/s, stop: {result.StopReason}");
            ui.Result(new JsonObject
            {
                ["text"] = result.Text,
                ["tokens"] = result.Tokens.Count,
                ["tokens_per_second"] = Round(result.TokensPerSecond, 2),
                ["prompt_tokens"] = result.PromptTokens.Count,
                ["stop_reason"] = result.StopReason,
                ["quant"] = loaded.Quant.Name,
                ["seed"] = opts.Seed,
            }, null);
            return ExitCode.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ inspect

    private static Command Inspect(App app)
    {
        var path = new Argument<string>("file-or-dir")
        {
            Description = "a .safetensors file, a model directory (config.json + safetensors), a llama2.c model.bin or tokenizer.bin",
        };
        var all = Flags.Switch("--all", "list every tensor (default: the first 40 in text mode)");
        var cmd = new Command("inspect", "Tensors, dtypes, shapes, quantization and memory of a checkpoint") { path, all };
        cmd.SetAction(r => app.Run(r, ui =>
        {
            var report = CheckpointInspector.Inspect(r.GetValue(path)!);
            ui.Result(report, Inspector.Text(report, r.GetValue(all)));
            return ExitCode.Ok;
        }));
        return cmd;
    }

    internal static string[] ProbeCommand()
    {
        string exe = Environment.ProcessPath ?? "dotnet";
        return Path.GetFileNameWithoutExtension(exe) == "dotnet"
            ? [exe, typeof(ModelCommands).Assembly.Location, "load-probe"]
            : [exe, "load-probe"];
    }

    internal static string? FindRepoRoot()
    {
        for (var d = new DirectoryInfo(Environment.CurrentDirectory); d is not null; d = d.Parent)
            if (Directory.Exists(Path.Combine(d.FullName, "tests", "QLoRA.Tests"))) return d.FullName;
        return null;
    }
}

/// <summary>Text form of the inspect report.</summary>
internal static class Inspector
{
    public static string Text(JsonObject report, bool all)
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"{report["path"]}  ({report["format"]})");
        if (report["config"] is JsonObject cfg)
            sb.AppendLine("config: " + string.Join(", ", cfg.Where(kv => kv.Value is not null && kv.Key != "quantization_config").Select(kv => $"{kv.Key} {kv.Value!.ToJsonString()}")));
        if (report["config"]?["quantization_config"] is JsonObject q)
            sb.AppendLine("quantization_config: " + q.ToJsonString());
        if (report["vocab_size"] is JsonNode v) sb.AppendLine($"vocabulary: {v} tokens");
        var tensors = report["tensors"]!.AsArray();
        int shown = 0;
        foreach (var t in tensors)
        {
            if (!all && shown == 40)
            {
                sb.AppendLine($"  ... {tensors.Count - 40} more (--all lists them)");
                break;
            }
            sb.AppendLine($"  {t!["name"],-60} {t["dtype"],-5} {t["shape"]!.ToJsonString(),-16} {t["bytes"]!.GetValue<long>() / 1048576.0,10:F3} MiB");
            shown++;
        }
        if (report["quantized"] is JsonArray qa && qa.Count > 0)
        {
            var first = qa[0]!;
            sb.AppendLine($"bitsandbytes 4-bit layers: {qa.Count} ({first["quant_type"]}, block {first["blocksize"]}, double quant {first["double_quant"]}), " +
                          $"{report["quantized_params"]} parameters, {qa.Sum(x => x!["bytes"]!.GetValue<long>()) * 8.0 / report["quantized_params"]!.GetValue<long>():F3} bits/param in the file (incl. each layer's code tables and quant state)");
        }
        if (report["params"] is JsonNode p) sb.AppendLine($"parameters: {p.GetValue<long>():N0}");
        sb.Append($"bytes: {report["bytes"]!.GetValue<long>():N0} ({report["bytes"]!.GetValue<long>() / 1048576.0:F2} MiB)" +
                  (report["bytes_by_dtype"] is JsonObject bd ? "; by dtype: " + string.Join(", ", bd.Select(kv => $"{kv.Key} {kv.Value!.GetValue<long>() / 1048576.0:F2} MiB")) : ""));
        return sb.ToString();
    }
}
