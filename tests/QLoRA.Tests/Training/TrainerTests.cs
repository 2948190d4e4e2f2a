using QLoRA.Adapters;
using QLoRA.Data;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Training;

namespace QLoRA.Tests.Training;

public class TrainerTests
{
    private string _dir = "";

    [SetUp]
    public void Dir() => _dir = Directory.CreateTempSubdirectory("qlora-train-").FullName;

    [TearDown]
    public void Clean() => Directory.Delete(_dir, true);

    // A task a tiny random model can learn in a few steps: a fixed greeting, then the word copied.
    private static (List<TokenizedExample> Train, List<TokenizedExample> Eval) Data(int n = 96)
    {
        var rng = new Random(11);
        var examples = Enumerable.Range(0, n).Select(i =>
        {
            string w = new(Enumerable.Range(0, 3 + rng.Next(6)).Select(_ => (char)('a' + rng.Next(26))).ToArray());
            return DataExample.Pair($"Greet {w}:", $"hello {w}", $"#{i}");
        }).ToList();
        var enc = new ByteEncoder();
        var tok = examples.Select(e => ExampleTokenizer.Tokenize(e, enc, new TokenizeOptions())!).ToList();
        return Batching.HoldOut(tok, 16);
    }

    private TrainResult Run(string name, TrainerOptions? options = null, Action<StepMetrics>? onStep = null, CancellationToken cancel = default, bool resume = false)
    {
        using var model = TinyModels.Build(21, QuantSpec.Nf4);
        var lora = LoraModel.Inject(model, new LoraOptions { Rank = 4, Alpha = 8, Dropout = 0.1 }, seed: 5);
        var (train, eval) = Data();
        var o = (options ?? new TrainerOptions { OutputDirectory = "" }) with
        {
            OutputDirectory = Path.Combine(_dir, name), Resume = resume, Plot = false, BaseModelName = "tiny",
        };
        var trainer = new Trainer(lora, train, eval, padId: 0, o) { OnStep = onStep };
        return trainer.Fit(cancel);
    }

    private static readonly TrainerOptions Short = new()
    {
        OutputDirectory = "", Steps = 6, BatchSize = 4, GradientAccumulation = 2, LearningRate = 5e-3, WarmupSteps = 2,
        Schedule = LrScheduleKind.Cosine, SaveEvery = 0, Seed = 7,
    };

    [Test]
    public void SameSeedSameLossesBitForBit()
    {
        var a = Run("a", Short);
        var b = Run("b", Short);
        Assert.That(a.Losses, Has.Count.EqualTo(6));
        Assert.That(b.Losses, Is.EqualTo(a.Losses), "losses bit for bit");
        Assert.That(b.FinalEvalLoss, Is.EqualTo(a.FinalEvalLoss));
        Assert.That(File.ReadAllBytes(Path.Combine(_dir, "b", PeftAdapter.WeightsFile)),
                    Is.EqualTo(File.ReadAllBytes(Path.Combine(_dir, "a", PeftAdapter.WeightsFile))), "same adapter bytes");
        var c = Run("c", Short with { Seed = 8 });
        Assert.That(c.Losses, Is.Not.EqualTo(a.Losses), "another seed, another run");
    }

    [Test]
    public void ResumeReproducesTheUninterruptedRun()
    {
        var full = Run("full", Short with { GradientCheckpointing = true });
        using var stop = new CancellationTokenSource();
        var first = Run("split", Short with { GradientCheckpointing = true }, m => { if (m.Step == 3) stop.Cancel(); }, stop.Token);
        Assert.That(first.Stopped, Is.True);
        Assert.That(first.Steps, Is.EqualTo(3));
        Assert.That(first.AdapterDirectory, Is.Null);
        Assert.That(Trainer.LatestCheckpoint(Path.Combine(_dir, "split", "checkpoints")), Does.EndWith("step-00000003"));
        var second = Run("split", Short with { GradientCheckpointing = true }, resume: true);
        Assert.That(second.Steps, Is.EqualTo(6));
        Assert.That(second.Losses, Is.EqualTo(full.Losses), "steps 1-3 kept from the log, 4-6 recomputed bit for bit");
        Assert.That(second.FinalEvalLoss, Is.EqualTo(full.FinalEvalLoss));
        Assert.That(second.InitialEvalLoss, Is.EqualTo(full.InitialEvalLoss));
        Assert.That(File.ReadAllBytes(Path.Combine(_dir, "split", PeftAdapter.WeightsFile)),
                    Is.EqualTo(File.ReadAllBytes(Path.Combine(_dir, "full", PeftAdapter.WeightsFile))));
        var lines = File.ReadAllLines(Path.Combine(_dir, "split", "metrics.jsonl"));
        Assert.That(lines.Count(l => l.Contains("\"type\":\"train\"")), Is.EqualTo(6), "one record per step across the resume");
    }

    [Test]
    public void LearnsAndWritesItsOutputs()
    {
        var r = Run("learn", Short with { Steps = 40, GradientAccumulation = 1, LearningRate = 1e-2, SaveEvery = 15, KeepCheckpoints = 2, Schedule = LrScheduleKind.Constant, EvalEvery = 20 },
                    m => { if (m.Step <= 5) TestContext.Out.WriteLine($"step {m.Step}: {m.Seconds:F3} s, {m.Tokens} tokens, loss {m.Loss:F3}"); });
        TestContext.Out.WriteLine($"eval loss {r.InitialEvalLoss:F3} -> {r.FinalEvalLoss:F3}");
        Assert.That(r.FinalEvalLoss, Is.LessThan(0.8 * r.InitialEvalLoss));
        string dir = Path.Combine(_dir, "learn");
        foreach (string f in new[] { PeftAdapter.WeightsFile, PeftAdapter.ConfigFile, "metrics.jsonl", "trainer_config.json" })
            Assert.That(File.Exists(Path.Combine(dir, f)), f);
        Assert.That(Directory.GetFiles(Path.Combine(dir, "tensorboard"), "events.out.tfevents.*"), Has.Length.EqualTo(1));
        var ckpts = Directory.GetDirectories(Path.Combine(dir, "checkpoints")).Select(Path.GetFileName).Order().ToArray();
        Assert.That(ckpts, Is.EqualTo(new[] { "step-00000030", "step-00000040" }), "the newest two are kept; no temporary directory is left");
        var evals = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Where(l => l.Contains("\"type\":\"eval\"")).ToList();
        Assert.That(evals, Has.Count.EqualTo(3), "before, at step 20, at the end");
        // A half-written checkpoint (a leftover temporary directory) is never picked up.
        Directory.CreateDirectory(Path.Combine(dir, "checkpoints", ".tmp-step-00000050-1"));
        Directory.CreateDirectory(Path.Combine(dir, "checkpoints", "step-00000060"));   // no trainer_state.json: incomplete
        Assert.That(Trainer.LatestCheckpoint(Path.Combine(dir, "checkpoints")), Does.EndWith("step-00000040"));
    }

    [Test]
    public void ResumeWithOtherSettingsIsRefused()
    {
        using var stop = new CancellationTokenSource();
        Run("x", Short, m => stop.Cancel(), stop.Token);
        var e = Assert.Throws<InvalidOperationException>(() => Run("x", Short with { BatchSize = 2 }, resume: true));
        Assert.That(e!.Message, Does.Contain("batch_size = 4").And.Contain("this run has 2"));
    }
}
