using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

using QLoRA.Adapters;
using QLoRA.Data;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Tests.Models;
using QLoRA.Training;

namespace QLoRA.Tests.Reliability;

/// <summary>
/// Crash safety of a real training run: a child process fine-tunes stories15M (NF4 + double quant, LoRA with
/// dropout) and is SIGKILLed at random moments — at random times, and on the checkpoint writer's phase lines
/// (the test hook QLORA_TEST_CHECKPOINT_PAUSE_MS makes it pause after each file, so the kill lands mid-write) —
/// then resumed with the same command. After every kill the checkpoints on disk are complete and loadable;
/// at the end the losses of the interrupted-and-resumed run equal an uninterrupted run's bit for bit, and so
/// does the final adapter file.
/// </summary>
[NonParallelizable]
public class CrashSafetyTests
{
    private const int Steps = 8;
    private const int SaveEvery = 2;
    private const int PauseMs = 120;
    private const int Kills = 12;
    private static readonly string[] Phases = ["begin", "adapter", "optimizer", "rng", "state", "renamed", "end"];

    // ------------------------------------------------------------------ the child process

    /// <summary>train-child OUT DATA MODEL TOKENIZER: the run (resumes from OUT's newest checkpoint if any).</summary>
    public static int ChildMain(string[] args)
    {
        if (args.Length != 4)
        {
            Console.Error.WriteLine("usage: train-child OUT DATA MODEL TOKENIZER");
            return 2;
        }
        TorchRuntime.EnsureLoaded(intraOpThreads: 1);
        try
        {
            Run(args);
            return 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or QLoRA.Native.QLoraException or InvalidDataException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    private static void Run(string[] args)
    {
        var report = FineTuning.Run(new FineTuneSettings
        {
            Model = args[2],
            Tokenizer = args[3],
            Data = args[1],
            SeqLen = 64, MaxSourceTokens = 32, MaxTargetTokens = 32, EvalExamples = 8,
            Lora = new LoraOptions { Rank = 4, Alpha = 8, Dropout = 0.1 },
            Trainer = new TrainerOptions
            {
                OutputDirectory = args[0], Steps = Steps, BatchSize = 4, LearningRate = 2e-3, WarmupSteps = 1,
                SaveEvery = SaveEvery, EvalEvery = 0, Plot = false, Seed = 11, Resume = true,
            },
        }, log: line => Console.Error.WriteLine(line));
        Console.Error.WriteLine($"done: {report.Result.Steps} steps");
    }

    internal sealed class Child : IDisposable
    {
        private readonly Process _p;
        private readonly ConcurrentQueue<string> _lines = new();
        private int _markers;
        private readonly SemaphoreSlim _marker = new(0);

        /// <param name="namespaceScript">A shell script run in a private mount namespace (unshare -m) instead of the
        /// child itself; "$@" in it runs the child (e.g. mount a small tmpfs, run "$@", list what is left).</param>
        public Child(string outDir, string data, bool pause, string? namespaceScript = null)
        {
            var files = TestModels.Files;
            var psi = new ProcessStartInfo(namespaceScript is null ? "dotnet" : "unshare") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
            if (namespaceScript is not null)
                foreach (string a in new[] { "-m", "sh", "-c", namespaceScript, "sh", "dotnet" })
                    psi.ArgumentList.Add(a);
            foreach (string a in new[] { "exec", typeof(CrashSafetyTests).Assembly.Location, "train-child", outDir, data, files.ModelPath, files.TokenizerPath })
                psi.ArgumentList.Add(a);
            psi.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
            psi.Environment["OMP_NUM_THREADS"] = "1";
            if (pause) psi.Environment["QLORA_TEST_CHECKPOINT_PAUSE_MS"] = PauseMs.ToString(CultureInfo.InvariantCulture);
            else psi.Environment.Remove("QLORA_TEST_CHECKPOINT_PAUSE_MS");
            _p = new Process { StartInfo = psi };
            _p.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is null) return;
                _lines.Enqueue(e.Data);
                if (e.Data.StartsWith("qlora-test: checkpoint ", StringComparison.Ordinal))
                {
                    LastMarker = e.Data["qlora-test: checkpoint ".Length..];
                    if (LastMarker.StartsWith("renamed ", StringComparison.Ordinal))
                        LastRenamedStep = long.Parse(LastMarker.Split(' ')[2], CultureInfo.InvariantCulture);
                    Interlocked.Increment(ref _markers);
                    _marker.Release();
                }
            };
            _p.OutputDataReceived += (_, e) => { if (e.Data is not null) _lines.Enqueue(e.Data); };
            _p.Start();
            _p.BeginErrorReadLine();
            _p.BeginOutputReadLine();
        }

        public volatile string? LastMarker;
        public long LastRenamedStep = -1;
        public string Output => string.Join('\n', _lines);
        public bool HasExited => _p.HasExited;
        public int ExitCode => _p.ExitCode;

        /// <summary>
        /// Waits for the exit and then for the last output lines: WaitForExit(ms) returns at the exit, possibly
        /// before the asynchronous readers have delivered the final lines (a CI run lost the "left:" listing so);
        /// the parameterless overload waits for both streams to reach end of file.
        /// </summary>
        public bool WaitForExit(int ms)
        {
            if (!_p.WaitForExit(ms)) return false;
            _p.WaitForExit();
            return true;
        }

        /// <summary>Waits for the <paramref name="n"/>-th checkpoint phase line (false: the process ended first).</summary>
        public bool WaitForMarker(int n, TimeSpan timeout)
        {
            var end = DateTime.UtcNow + timeout;
            while (Volatile.Read(ref _markers) < n)
            {
                if (_p.HasExited || DateTime.UtcNow > end) return false;
                _marker.Wait(50);
            }
            return true;
        }

        public void Kill()
        {
            _p.Kill();          // SIGKILL on Unix
            _p.WaitForExit();
        }

        public void Dispose()
        {
            if (!_p.HasExited) Kill();
            _p.Dispose();
            _marker.Dispose();
        }
    }

    // ------------------------------------------------------------------ the test

    [Test]
    public void KilledAtRandomMomentsTheCheckpointsStayCompleteAndTheResumedRunEqualsAnUninterruptedOne()
    {
        _ = TestModels.Files;   // skips without npm (the default model)
        string root = TestModels.TempDir("crash");
        try
        {
            string data = Path.Combine(root, "data.jsonl");
            WriteData(data);

            // The uninterrupted run.
            string reference = Path.Combine(root, "reference");
            var clock = Stopwatch.StartNew();
            using (var c = new Child(reference, data, pause: false))
            {
                Assert.That(c.WaitForExit(300_000), Is.True, "the reference run did not finish in 5 minutes");
                Assert.That(c.ExitCode, Is.EqualTo(0), c.Output);
            }
            double referenceSeconds = clock.Elapsed.TotalSeconds;

            // The interrupted runs: kill, check the disk, resume with the same command, until a resume finishes;
            // then compare with the reference. A new round starts until Kills kills were made.
            int seed = Environment.GetEnvironmentVariable("QLORA_CRASH_SEED") is { } s ? int.Parse(s, CultureInfo.InvariantCulture) : Environment.TickCount;
            var rng = new Random(seed);
            TestContext.Out.WriteLine($"reference run {referenceSeconds:F1} s; kill seed {seed} (QLORA_CRASH_SEED={seed} repeats the kill moments)");
            var expected = TrainLosses(reference);
            Assert.That(expected.Keys, Is.EqualTo(Enumerable.Range(1, Steps).Select(i => (long)i)));
            byte[] expectedAdapter = File.ReadAllBytes(Path.Combine(reference, "adapter_model.safetensors"));
            int kills = 0, rounds = 0;
            while (kills < Kills)
            {
                Assert.That(rounds++, Is.LessThan(4), "too many rounds");
                string run = Path.Combine(root, $"killed-{rounds}");
                string ckRoot = Path.Combine(run, "checkpoints");
                long newestRenamed = -1;
                for (int attempt = 0; ; attempt++)
                {
                    Assert.That(attempt, Is.LessThan(3 * Kills), "the run never finished");
                    using var c = new Child(run, data, pause: true);
                    string where;
                    if (kills >= Kills)
                    {
                        Assert.That(c.WaitForExit(300_000), Is.True, "the last resume did not finish in 5 minutes");
                        Assert.That(c.ExitCode, Is.EqualTo(0), c.Output);
                        break;
                    }
                    if (kills % 2 == 0)
                    {
                        // A random time: starting, loading, training, writing or evaluating.
                        int ms = rng.Next(300, (int)(referenceSeconds * 800));
                        if (c.WaitForExit(ms)) { Assert.That(c.ExitCode, Is.EqualTo(0), c.Output); break; }
                        c.Kill();
                        where = $"at {ms} ms (last checkpoint phase: {c.LastMarker ?? "none"})";
                    }
                    else
                    {
                        // Inside the next checkpoint write: after its n-th phase line, within that phase's pause.
                        int n = rng.Next(1, Phases.Length + 1);
                        if (!c.WaitForMarker(n, TimeSpan.FromMinutes(5)))
                        {
                            Assert.That(c.WaitForExit(300_000), Is.True);
                            Assert.That(c.ExitCode, Is.EqualTo(0), c.Output);
                            break;
                        }
                        Thread.Sleep(rng.Next(0, PauseMs / 2));
                        c.Kill();
                        where = $"in a checkpoint write, after '{c.LastMarker}'";
                    }
                    kills++;
                    TestContext.Out.WriteLine($"  round {rounds}: killed {where}");
                    newestRenamed = Math.Max(newestRenamed, c.LastRenamedStep);
                    long newest = CheckCheckpoints(ckRoot, where);
                    Assert.That(newest, Is.GreaterThanOrEqualTo(newestRenamed),
                        $"killed {where}: the newest checkpoint is step {newest} but step {newestRenamed} had been completed");
                }
                // Nothing half-written is left, the losses are the uninterrupted run's, and so is the adapter.
                Assert.That(Directory.GetDirectories(ckRoot, ".*"), Is.Empty, "debris of killed writes was not removed");
                Assert.That(TrainLosses(run), Is.EqualTo(expected), "losses of the resumed run (step -> loss, as logged)");
                Assert.That(File.ReadAllBytes(Path.Combine(run, "adapter_model.safetensors")), Is.EqualTo(expectedAdapter), "final adapter bytes");
                TestContext.Out.WriteLine($"  round {rounds}: finished; losses and adapter equal the reference's");
            }
            TestContext.Out.WriteLine($"{kills} kill points in {rounds} round(s), {clock.Elapsed.TotalSeconds:F0} s in all");
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    /// <summary>Every step-* checkpoint is complete and loadable; returns the newest step (-1: none).</summary>
    private static long CheckCheckpoints(string ckRoot, string where)
    {
        if (!Directory.Exists(ckRoot)) return -1;
        foreach (string d in Directory.GetDirectories(ckRoot))
        {
            string name = Path.GetFileName(d);
            if (name.StartsWith(".tmp-step-", StringComparison.Ordinal) || name.StartsWith(".del-step-", StringComparison.Ordinal)) continue;
            Assert.That(name, Does.Match("^step-[0-9]{8}$"), $"killed {where}: unexpected directory {d}");
            foreach (string f in new[] { "adapter_config.json", "adapter_model.safetensors", "optimizer.bin", "rng.bin", "trainer_state.json" })
                Assert.That(new FileInfo(Path.Combine(d, f)).Exists, Is.True, $"killed {where}: {d} lacks {f}");
            var state = JsonNode.Parse(File.ReadAllText(Path.Combine(d, "trainer_state.json")))!;
            Assert.That((long)state["step"]!, Is.EqualTo(long.Parse(name[5..], CultureInfo.InvariantCulture)), $"killed {where}: {d}/trainer_state.json");
            using var adapter = PeftAdapter.Read(d);
            Assert.That(adapter.Weights, Has.Count.EqualTo(7 * 6), $"killed {where}: {d} adapter layers");   // 6 layers x q,k,v,o,gate,up,down
            Assert.That(new FileInfo(Path.Combine(d, "optimizer.bin")).Length, Is.GreaterThan(0));
        }
        return Trainer.LatestCheckpoint(ckRoot) is { } latest ? long.Parse(Path.GetFileName(latest)[5..], CultureInfo.InvariantCulture) : -1;
    }

    private static SortedDictionary<long, string> TrainLosses(string dir)
    {
        var losses = new SortedDictionary<long, string>();
        foreach (string line in File.ReadLines(Path.Combine(dir, "metrics.jsonl")))
        {
            var n = JsonNode.Parse(line)!;
            if ((string?)n["type"] != "train") continue;
            long step = (long)n["step"]!;
            Assert.That(losses.ContainsKey(step), Is.False, $"{dir}/metrics.jsonl logs step {step} twice");
            losses[step] = n["loss"]!.ToJsonString();   // the logged text: exact, not rounded by a comparison
        }
        return losses;
    }

    internal static void WriteData(string path)
    {
        string[] animals = ["cat", "dog", "bird", "fish", "fox", "owl", "bear", "frog"];
        string[] colors = ["red", "blue", "green", "small", "big", "happy", "sleepy", "brave"];
        using var w = new StreamWriter(path);
        for (int i = 0; i < 72; i++)
        {
            string a = animals[i % animals.Length], c = colors[(i * 3 + i / 8) % colors.Length];
            var o = new JsonObject { ["input"] = $"Tell a story about a {c} {a} number {i}.", ["output"] = $"Once upon a time there was a {c} {a}. It had {i % 5 + 1} friends." };
            w.WriteLine(o.ToJsonString());
        }
    }
}
