using System.Diagnostics;
using System.Runtime.CompilerServices;

using QLoRA.Models;
using QLoRA.Tokenization;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Generation;

/// <summary>How to pick tokens.</summary>
public sealed record SamplingOptions
{
    /// <summary>Tokens to generate at most.</summary>
    public int MaxNewTokens { get; init; } = 128;

    /// <summary>0 = greedy (argmax); otherwise logits are divided by it before softmax.</summary>
    public double Temperature { get; init; } = 0.8;

    /// <summary>Keep only the k most likely tokens (0 = off).</summary>
    public int TopK { get; init; }

    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches p (1 = off).</summary>
    public double TopP { get; init; } = 0.95;

    /// <summary>Seed of the sampler (same seed, model and prompt: same tokens).</summary>
    public ulong Seed { get; init; } = 42;

    /// <summary>Stop at an end-of-sequence token (default true).</summary>
    public bool StopAtEos { get; init; } = true;

    /// <summary>
    /// Decode steps (one token) round the activations of the 4-bit layers to 8 bits
    /// (<see cref="Models.Linear4bit.Int8Activations"/>): faster on AVX512-VNNI CPUs, approximate. The prompt's
    /// prefill stays exact (it has more than 8 rows). Default off. When on, <c>TextGenerator.Generate</c>
    /// sets every layer's flag for the call and clears it afterwards.
    /// </summary>
    public bool Int8Activations { get; init; }

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is out of range.</exception>
    public SamplingOptions Validate()
    {
        if (MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "max new tokens must be >= 0");
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "temperature must be a finite number >= 0");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top-k must be >= 0");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "top-p must be in (0, 1]");
        return this;
    }
}

/// <summary>One generated token.</summary>
/// <param name="Id">Token id.</param>
/// <param name="Text">The text it completes (may be empty while a multi-byte character is incomplete).</param>
/// <param name="IsEos">It is an end-of-sequence token (not part of the text).</param>
public readonly record struct GeneratedToken(int Id, string Text, bool IsEos);

/// <summary>The result of a generation.</summary>
/// <param name="PromptTokens">Ids of the prompt.</param>
/// <param name="Tokens">Ids generated (EOS included if it stopped there).</param>
/// <param name="Text">Decoded generated text.</param>
/// <param name="StopReason">"eos" or "max_tokens".</param>
/// <param name="PrefillSeconds">Time to process the prompt.</param>
/// <param name="DecodeSeconds">Time of the token-by-token part.</param>
public sealed record GenerationResult(IReadOnlyList<int> PromptTokens, IReadOnlyList<int> Tokens, string Text, string StopReason,
    double PrefillSeconds, double DecodeSeconds)
{
    /// <summary>Generated tokens per second of decoding (the first token counts with the prefill).</summary>
    public double TokensPerSecond => Tokens.Count <= 1 || DecodeSeconds <= 0 ? 0 : (Tokens.Count - 1) / DecodeSeconds;
}

/// <summary>
/// Autoregressive generation with a KV cache: the prompt is processed once, then one token per step reads the
/// cache. Greedy (temperature 0), temperature, top-k and top-p sampling with a seeded generator; stops at EOS or
/// after the maximum number of tokens; tokens stream through a callback or <see cref="StreamAsync"/>.
/// </summary>
public sealed class TextGenerator(LlamaForCausalLM model, TextTokenizer tokenizer)
{
    /// <summary>The model.</summary>
    public LlamaForCausalLM Model { get; } = model;

    /// <summary>The tokenizer.</summary>
    public TextTokenizer Tokenizer { get; } = tokenizer;

    /// <summary>Generates from a text prompt (tokenized with BOS as the tokenizer does).</summary>
    public GenerationResult Generate(string prompt, SamplingOptions options, Action<GeneratedToken>? onToken = null) =>
        Generate(Tokenizer.Encode(prompt), options, onToken);

    /// <summary>Generates from prompt ids.</summary>
    public GenerationResult Generate(IReadOnlyList<int> prompt, SamplingOptions options, Action<GeneratedToken>? onToken = null, CancellationToken cancel = default)
    {
        options.Validate();
        if (prompt.Count == 0) throw new ArgumentException("the prompt has no tokens (give text, or a tokenizer that adds BOS)", nameof(prompt));
        foreach (int id in prompt)
            if (id < 0 || id >= Model.Config.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(prompt), $"prompt token {id} is outside the model's vocabulary [0, {Model.Config.VocabSize})");
        var eos = new HashSet<int>(Tokenizer.EosIds);
        var produced = new List<int>();
        var decoder = new TextTokenizer.StreamDecoder(Tokenizer);
        string stop = "max_tokens";
        using var gen = new torch.Generator(options.Seed);
        using var noGrad = no_grad();
        long capacity = prompt.Count + Math.Max(1, options.MaxNewTokens);
        using var cache = Model.CreateCache(1, capacity);
        if (options.Int8Activations) Model.SetInt8Activations(true);
        var sw = Stopwatch.StartNew();
        double prefill = 0;
        Tensor? logits = null;
        try
        {
            using (var scope = NewDisposeScope())
            {
                using var ids = tensor(prompt.Select(i => (long)i).ToArray(), [1, prompt.Count]);
                logits = Model.Forward(ids, cache: cache, lastTokenOnly: true).MoveToOuterDisposeScope();
            }
            for (int step = 0; step < options.MaxNewTokens; step++)
            {
                cancel.ThrowIfCancellationRequested();
                int next;
                using (var scope = NewDisposeScope())
                    next = Pick(logits.select(1, 0).select(0, 0), options, gen);
                if (step == 0) prefill = sw.Elapsed.TotalSeconds;
                produced.Add(next);
                bool isEos = eos.Contains(next);
                if (isEos && options.StopAtEos)
                {
                    onToken?.Invoke(new GeneratedToken(next, "", true));
                    stop = "eos";
                    break;
                }
                onToken?.Invoke(new GeneratedToken(next, decoder.Push(next), isEos));
                if (step + 1 == options.MaxNewTokens) break;
                logits.Dispose();
                using var scope2 = NewDisposeScope();
                using var one = tensor(new long[] { next }, [1, 1]);
                logits = Model.Forward(one, cache: cache, lastTokenOnly: true).MoveToOuterDisposeScope();
            }
        }
        finally
        {
            logits?.Dispose();
            if (options.Int8Activations) Model.SetInt8Activations(false);
        }
        double total = sw.Elapsed.TotalSeconds;
        var textIds = stop == "eos" ? produced.Take(produced.Count - 1) : produced;
        return new GenerationResult(prompt.ToList(), produced, Tokenizer.Decode(textIds), stop, prefill, total - prefill);
    }

    /// <summary>Streams generated tokens as they are produced.</summary>
    public async IAsyncEnumerable<GeneratedToken> StreamAsync(string prompt, SamplingOptions options, [EnumeratorCancellation] CancellationToken cancel = default)
    {
        var channel = System.Threading.Channels.Channel.CreateUnbounded<GeneratedToken>();
        var ids = Tokenizer.Encode(prompt);
        var work = Task.Run(() =>
        {
            try
            {
                Generate(ids, options, t => channel.Writer.TryWrite(t), cancel);
                channel.Writer.TryComplete();
            }
            catch (Exception e)
            {
                channel.Writer.TryComplete(e);
            }
        }, CancellationToken.None);
        await foreach (var t in channel.Reader.ReadAllAsync(CancellationToken.None))
            yield return t;
        await work;
    }

    /// <summary>
    /// Picks the next token from logits [vocab]: argmax at temperature 0; otherwise softmax(logits / T) restricted to
    /// the top-k tokens and the top-p nucleus, sampled with <paramref name="generator"/>.
    /// </summary>
    public static int Pick(Tensor logits, SamplingOptions options, torch.Generator? generator)
    {
        if (options.Temperature == 0) return (int)logits.argmax().item<long>();
        var scaled = logits.to(ScalarType.Float32) / options.Temperature;
        if (options.TopK > 0 && options.TopK < scaled.shape[0])
        {
            var kth = scaled.topk(options.TopK).values[options.TopK - 1];
            scaled = scaled.masked_fill(scaled < kth, double.NegativeInfinity);
        }
        var probs = scaled.softmax(0);
        if (options.TopP < 1)
        {
            var (sorted, order) = probs.sort(descending: true);
            var cum = sorted.cumsum(0);
            // Keep tokens while the mass before them is below p (the first token always stays).
            var drop = (cum - sorted) >= options.TopP;
            sorted = sorted.masked_fill(drop, 0);
            probs = zeros_like(probs).scatter(0, order, sorted);
            probs = probs / probs.sum();
        }
        return (int)multinomial(probs, 1, false, generator).item<long>();
    }
}
