using System.Diagnostics;

using QLoRA.Models;
using QLoRA.Tokenization;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Evaluation;

/// <summary>Perplexity of a model on a token sequence.</summary>
/// <param name="Perplexity">exp(mean negative log-likelihood).</param>
/// <param name="MeanNll">Mean negative log-likelihood per scored token (nats).</param>
/// <param name="Tokens">Tokens scored (every token after the first).</param>
/// <param name="Windows">Forward passes.</param>
/// <param name="Seconds">Wall time.</param>
public sealed record PerplexityResult(double Perplexity, double MeanNll, long Tokens, int Windows, double Seconds)
{
    /// <summary>Scored tokens per second.</summary>
    public double TokensPerSecond => Seconds > 0 ? Tokens / Seconds : 0;
}

/// <summary>
/// Perplexity with a sliding window (Hugging Face's recipe): windows of <c>windowLength</c> tokens starting every
/// <c>stride</c> tokens; each token is scored once, by the first window that reaches it, conditioned on up to
/// windowLength - 1 tokens before it. stride = windowLength gives disjoint windows; a smaller stride gives every
/// scored token more context (at more compute).
/// </summary>
public static class Perplexity
{
    /// <summary>Tokenizes <paramref name="text"/> (BOS first) and evaluates it.</summary>
    public static PerplexityResult OfText(LlamaForCausalLM model, TextTokenizer tokenizer, string text, int windowLength, int? stride = null,
        long? maxTokens = null, Action<string>? log = null, Action<long, long>? progress = null)
    {
        var ids = tokenizer.Encode(text);
        if (maxTokens is { } m && ids.Count > m) ids = ids.GetRange(0, checked((int)m));
        return OfTokens(model, ids, windowLength, stride, log, progress);
    }

    /// <summary>Evaluates token ids. <paramref name="progress"/> gets (tokens scored, tokens to score) after each window.</summary>
    /// <exception cref="ArgumentException">Fewer than 2 tokens, or a bad window/stride.</exception>
    public static PerplexityResult OfTokens(LlamaForCausalLM model, IReadOnlyList<int> ids, int windowLength, int? stride = null, Action<string>? log = null,
        Action<long, long>? progress = null)
    {
        if (ids.Count < 2) throw new ArgumentException($"perplexity needs at least 2 tokens, the text has {ids.Count}", nameof(ids));
        if (windowLength < 2) throw new ArgumentOutOfRangeException(nameof(windowLength), windowLength, "the window must hold at least 2 tokens");
        int step = stride ?? windowLength;
        if (step < 1 || step > windowLength) throw new ArgumentOutOfRangeException(nameof(stride), step, $"the stride must be in [1, {windowLength}]");
        var sw = Stopwatch.StartNew();
        using var noGrad = no_grad();
        double nll = 0;
        long scored = 0;
        int windows = 0;
        int n = ids.Count;
        int prevEnd = 1; // token 0 is never a target
        for (int begin = 0; ; begin += step)
        {
            int end = Math.Min(begin + windowLength, n);
            int firstTarget = Math.Max(prevEnd, begin + 1);
            if (firstTarget < end)
            {
                using var scope = NewDisposeScope();
                var input = tensor(ids.Skip(begin).Take(end - begin).Select(i => (long)i).ToArray(), [1, end - begin]);
                var logits = model.Forward(input);                                       // [1, L, V] fp32
                // Position p predicts token begin + p + 1; targets are firstTarget..end-1.
                int from = firstTarget - begin - 1, count = end - firstTarget;
                var logp = logits.narrow(1, from, count).log_softmax(-1);
                var target = tensor(ids.Skip(firstTarget).Take(count).Select(i => (long)i).ToArray(), [1, count, 1]);
                var picked = logp.gather(2, target);
                nll -= picked.to(ScalarType.Float64).sum().item<double>();
                scored += count;
                windows++;
                if (log is not null && windows % 16 == 0) log($"  {scored} tokens, running perplexity {Math.Exp(nll / scored):F3}");
                progress?.Invoke(scored, ids.Count - 1);
            }
            prevEnd = end;
            if (end == n) break;
        }
        double mean = nll / scored;
        return new PerplexityResult(Math.Exp(mean), mean, scored, windows, sw.Elapsed.TotalSeconds);
    }
}
