using QLoRA.Models;

namespace QLoRA.Tests.Models;

/// <summary>
/// Base of the bad-input fixtures: converts the default model to a Hugging Face directory once per fixture
/// (<see cref="Original"/>) and gives every test a fresh copy of it to break (<see cref="Copy"/>).
/// </summary>
public abstract class HuggingFaceCopyFixture
{
    /// <summary>The converted model, never modified.</summary>
    protected string Original { get; private set; } = "";

    /// <summary>This test's copy of <see cref="Original"/>.</summary>
    protected string Copy { get; private set; } = "";

    [OneTimeSetUp]
    public void MakeHuggingFaceModel()
    {
        TorchRuntime.EnsureLoaded();
        Original = TestModels.TempDir(GetType().Name + "-hf");
        var f = TestModels.Files;
        Checkpoints.ConvertLlama2cToHuggingFace(f.ModelPath, f.TokenizerPath, Original);
    }

    [OneTimeTearDown]
    public void RemoveHuggingFaceModel() => Directory.Delete(Original, true);

    [SetUp]
    public void CopyModel()
    {
        Copy = TestModels.TempDir(GetType().Name);
        foreach (string f in Directory.GetFiles(Original)) File.Copy(f, Path.Combine(Copy, Path.GetFileName(f)));
    }

    [TearDown]
    public void RemoveCopy() => Directory.Delete(Copy, true);
}
