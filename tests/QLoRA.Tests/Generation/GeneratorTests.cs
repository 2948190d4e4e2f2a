using QLoRA.Generation;
using QLoRA.Models;
using QLoRA.Tests.Models;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Generation;

/// <summary>KV-cached generation against full recomputation, sampling determinism, stopping and streaming, on stories15M.</summary>
public class GeneratorTests
{
    [OneTimeSetUp]
    public void Load() => TorchRuntime.EnsureLoaded();

    // Greedy decoding by recomputing the whole sequence each step (no cache): the reference.
    private static List<int> UncachedGreedy(LlamaForCausalLM model, List<int> prompt, int n)
    {
        var ids = new List<int>(prompt);
        using var _ = no_grad();
        for (int i = 0; i < n; i++)
        {
            using var scope = NewDisposeScope();
            var logits = model.forward(tensor(ids.Select(x => (long)x).ToArray(), [1, ids.Count]));
            ids.Add((int)logits[0, ids.Count - 1].argmax().item<long>());
        }
        return ids.Skip(prompt.Count).ToList();
    }

    [TestCase("none")]
    [TestCase("nf4")]
    public void CachedGreedyEqualsUncachedRecompute(string quant)
    {
        var m = TestModels.Stories(QuantSpec.Parse(quant));
        var tok = m.RequireTokenizer();
        var prompt = tok.Encode("Once upon a time, there was a little boy named Tim.");
        var gen = new TextGenerator(m.Model, tok);
        var result = gen.Generate(prompt, new SamplingOptions { Temperature = 0, MaxNewTokens = 24, StopAtEos = false });
        Assert.That(result.Tokens, Has.Count.EqualTo(24));
        Assert.That(result.Tokens, Is.EqualTo(UncachedGreedy(m.Model, prompt, 24)));
        Assert.That(result.Text, Is.Not.Empty);
        Assert.That(result.StopReason, Is.EqualTo("max_tokens"));
    }

    [Test]
    public void SamplingIsDeterministicPerSeedAndStopsAtEos()
    {
        var m = TestModels.Stories(QuantSpec.Nf4);
        var tok = m.RequireTokenizer();
        var gen = new TextGenerator(m.Model, tok);
        Assert.That(tok.EosIds, Is.EquivalentTo(new[] { 1, 2 }), "llama2.c stories end with BOS (run.c stops there) or EOS");
        var opts = new SamplingOptions { Temperature = 1.0, TopP = 0.9, TopK = 40, MaxNewTokens = 300, Seed = 7 };
        var a = gen.Generate("Once upon a time", opts);
        var b = gen.Generate("Once upon a time", opts with { MaxNewTokens = 30 });
        var c = gen.Generate("Once upon a time", opts with { Seed = 8 });
        Assert.That(b.Tokens, Is.EqualTo(a.Tokens.Take(30)), "same seed, same tokens");
        Assert.That(c.Tokens.Take(30), Is.Not.EqualTo(a.Tokens.Take(30)), "another seed, another story");
        // stories15M ends a story with BOS (id 1), usually within 300 tokens; check the stop logic either way.
        foreach (var r in new[] { a, c })
        {
            if (r.StopReason == "eos")
            {
                Assert.That(tok.EosIds, Does.Contain(r.Tokens[^1]));
                Assert.That(r.Tokens.Take(r.Tokens.Count - 1).Any(t => tok.EosIds.Contains(t)), Is.False, "stops at the first end token");
                Assert.That(r.Text, Is.EqualTo(tok.Decode(r.Tokens.Take(r.Tokens.Count - 1))));
            }
            else
            {
                Assert.That(r.StopReason, Is.EqualTo("max_tokens"));
                Assert.That(r.Tokens, Has.Count.EqualTo(300));
            }
        }
        Assert.That(new[] { a.StopReason, c.StopReason }, Does.Contain("eos"), "at least one of two 300-token stories ends");
    }

    [Test]
    public void TopKOneIsGreedy()
    {
        var m = TestModels.Stories(QuantSpec.Nf4);
        var gen = new TextGenerator(m.Model, m.RequireTokenizer());
        var greedy = gen.Generate("The cat", new SamplingOptions { Temperature = 0, MaxNewTokens = 12, StopAtEos = false });
        var k1 = gen.Generate("The cat", new SamplingOptions { Temperature = 1.5, TopK = 1, MaxNewTokens = 12, StopAtEos = false, Seed = 99 });
        Assert.That(k1.Tokens, Is.EqualTo(greedy.Tokens));
        var tinyP = gen.Generate("The cat", new SamplingOptions { Temperature = 1.5, TopP = 1e-6, MaxNewTokens = 12, StopAtEos = false, Seed = 5 });
        Assert.That(tinyP.Tokens, Is.EqualTo(greedy.Tokens), "a nucleus that holds one token is greedy");
    }

    [Test]
    public void PickFollowsTheDistribution()
    {
        // Three tokens with probabilities 0.5/0.3/0.2 at temperature 1: frequencies over 4000 draws.
        using var logits = tensor(new[] { MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.2f) });
        var gen = new torch.Generator(123);
        var counts = new int[3];
        var opts = new SamplingOptions { Temperature = 1, TopP = 1 };
        for (int i = 0; i < 4000; i++) counts[TextGenerator.Pick(logits, opts, gen)]++;
        Assert.That(counts[0] / 4000.0, Is.EqualTo(0.5).Within(0.04));
        Assert.That(counts[1] / 4000.0, Is.EqualTo(0.3).Within(0.04));
        Assert.That(counts[2] / 4000.0, Is.EqualTo(0.2).Within(0.04));
        // top-p 0.7 keeps {0.5, 0.3} renormalized: the third never appears.
        var counts2 = new int[3];
        for (int i = 0; i < 2000; i++) counts2[TextGenerator.Pick(logits, opts with { TopP = 0.7 }, gen)]++;
        Assert.That(counts2[2], Is.EqualTo(0));
        Assert.That(counts2[0] / 2000.0, Is.EqualTo(0.625).Within(0.05));
    }

    [Test]
    public async Task StreamingYieldsTheSameTextAsTheResult()
    {
        var m = TestModels.Stories(QuantSpec.Nf4);
        var gen = new TextGenerator(m.Model, m.RequireTokenizer());
        var opts = new SamplingOptions { Temperature = 0.8, MaxNewTokens = 40, Seed = 3 };
        var result = gen.Generate("Once upon a time", opts);
        var streamed = new System.Text.StringBuilder();
        var ids = new List<int>();
        await foreach (var t in gen.StreamAsync("Once upon a time", opts))
        {
            ids.Add(t.Id);
            if (!t.IsEos) streamed.Append(t.Text);
        }
        Assert.That(ids, Is.EqualTo(result.Tokens));
        Assert.That(streamed.ToString(), Is.EqualTo(result.Text));
    }

    [Test]
    public void BadOptionsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new SamplingOptions { Temperature = -1 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new SamplingOptions { TopP = 0 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new SamplingOptions { TopK = -2 }.Validate());
        var m = TestModels.Stories(QuantSpec.Nf4);
        var gen = new TextGenerator(m.Model, m.RequireTokenizer());
        Assert.Throws<ArgumentOutOfRangeException>(() => gen.Generate([1, 40000], new SamplingOptions()));
    }
}
