using QLoRA.IO;
using QLoRA.Models;
using QLoRA.Native;
using QLoRA.Tests.Models;
using QLoRA.Training;

namespace QLoRA.Tests.Reliability;

/// <summary>
/// The rows of docs/errors.md that no other test covered: a weight of the wrong dtype, NaN weights, an
/// unwritable output directory and a disk that fills up during a checkpoint. Each asserts the message (the file,
/// the tensor, the problem) and that nothing partial is left behind.
/// </summary>
[NonParallelizable]
public class BadInputCatalogTests : HuggingFaceCopyFixture
{
    private const string QProj = "model.layers.2.self_attn.q_proj.weight";
    private const string Norm = "model.layers.1.post_attention_layernorm.weight";

    // model.safetensors with one tensor replaced (same name and shape).
    private void Replace(string name, Func<SafetensorsFile, SafetensorsTensorInfo, SafetensorsWriter, bool> add)
    {
        string st = Path.Combine(Copy, "model.safetensors");
        string tmp = st + ".new";
        using (var from = SafetensorsFile.Open(Path.Combine(Original, "model.safetensors")))
        using (var w = new SafetensorsWriter())
        {
            foreach (var t in from.Tensors)
                if (t.Name != name || !add(from, t, w))
                    w.Add(t.Name, from.Data(t), t.Shape, borrow: true, owner: from);
            w.Write(tmp);
        }
        File.Move(tmp, st, overwrite: true);
    }

    private Exception LoadFails(QuantSpec quant) =>
        Assert.Catch(() => ModelLoader.Load(Copy, new ModelLoadOptions { Quant = quant }).Dispose())!;

    [Test]
    public void WrongDtypeNamesTheTensorAndTheDtype()
    {
        Replace(QProj, (from, t, w) =>
        {
            long n = t.Shape.Aggregate(1L, (a, b) => a * b);
            w.Add(t.Name, new int[n], QLoraDtype.I32, t.Shape.ToArray());
            return true;
        });
        var e = LoadFails(QuantSpec.Nf4);
        TestContext.Out.WriteLine(e.Message);
        Assert.That(e.Message, Does.Contain(QProj).And.Contain("I32"));
    }

    [TestCase("nf4", QProj)]
    [TestCase("none", QProj)]
    [TestCase("nf4", Norm)]
    public unsafe void NaNWeightsAreRefusedWithTheTensorName(string quant, string tensor)
    {
        Replace(tensor, (from, t, w) =>
        {
            var v = from.Data(t);
            long n = v.Rows * v.Cols;
            var copy = new ReadOnlySpan<float>(v.Data, checked((int)n)).ToArray();
            copy[n / 2] = float.NaN;
            w.Add(t.Name, copy, QLoraDtype.F32, t.Shape.ToArray());
            return true;
        });
        var e = LoadFails(QuantSpec.Parse(quant));
        TestContext.Out.WriteLine(e.Message);
        Assert.That(e.Message, Does.Contain(tensor).And.Contain("not finite"));
    }

    [Test]
    public void AnUnwritableOutputDirectoryFailsBeforeLoading()
    {
        // The output path runs through a regular file (root ignores permission bits, so chmod cannot make a
        // directory unwritable for the test; a file in the path fails for every user).
        string file = Path.Combine(Copy, "a-file");
        File.WriteAllText(file, "x");
        string outDir = Path.Combine(file, "run");
        var e = Assert.Throws<IOException>(() => FineTuning.Run(new FineTuneSettings
        {
            Model = Path.Combine(Copy, "no-such-model"),
            Data = Path.Combine(Copy, "no-such-data.jsonl"),
            Trainer = new TrainerOptions { OutputDirectory = outDir },
        }))!;
        TestContext.Out.WriteLine(e.Message);
        Assert.That(e.Message, Does.StartWith($"the output directory {outDir} is not writable"));
        Assert.That(File.ReadAllText(file), Is.EqualTo("x"));
    }

    [Test]
    public void ADiskThatFillsUpDuringACheckpointLeavesNoPartialCheckpoint()
    {
        // A training child process in a private mount namespace whose output directory is a 320 KiB tmpfs: the
        // logs fit, the first checkpoint (adapter + optimizer state, ~1.6 MB) does not.
        string outDir = Path.Combine(Copy, "full");
        Directory.CreateDirectory(outDir);
        string data = Path.Combine(Copy, "data.jsonl");
        CrashSafetyTests.WriteData(data);
        string script = $"mount -t tmpfs -o size=320k tmpfs '{outDir}' || exit 90; \"$@\"; rc=$?; " +
                        $"echo \"left: $(cd '{outDir}' && find . -mindepth 1 | sort | tr '\\n' ' ')\"; exit $rc";
        using var c = new CrashSafetyTests.Child(outDir, data, pause: false, namespaceScript: script);
        Assert.That(c.WaitForExit(600_000), Is.True);
        string output = c.Output;
        if (c.ExitCode == 90 || output.Contains("unshare:"))
            Assert.Ignore("cannot mount a small tmpfs here (needs CAP_SYS_ADMIN): " + output);
        string error = output.Split('\n').LastOrDefault(l => l.StartsWith("error:", StringComparison.Ordinal)) ?? "";
        string left = output.Split('\n').LastOrDefault(l => l.StartsWith("left:", StringComparison.Ordinal)) ?? "";
        TestContext.Out.WriteLine(error);
        TestContext.Out.WriteLine(left);
        Assert.That(c.ExitCode, Is.EqualTo(1), output);
        Assert.That(error, Does.StartWith($"error: cannot write the checkpoint of step 2 into {outDir}/checkpoints").And.Contain("No space left on device"));
        Assert.That(left, Does.Contain("./metrics.jsonl"), "the listing ran");
        Assert.That(left, Does.Not.Contain("step-").And.Not.Contain(".tmp").And.Not.Contain("adapter_model"), "partial checkpoint or adapter left behind");
    }
}
