using QLoRA.Tokenization;

namespace QLoRA.Data;

/// <summary>What the data pipeline needs from a tokenizer.</summary>
public interface ITokenEncoder
{
    /// <summary>Token ids of <paramref name="text"/> without BOS/EOS (SentencePiece tokenizers add their dummy-prefix space).</summary>
    IReadOnlyList<int> Encode(string text);

    /// <summary>Beginning-of-sequence id, or null when the model has none.</summary>
    int? BosId { get; }

    /// <summary>End-of-sequence id.</summary>
    int EosId { get; }

    /// <summary>
    /// A conversation through the chat template: its token ids (BOS and the template's special tokens included)
    /// and, per token, whether it belongs to an assistant turn (the turn's text and its end-of-turn marker).
    /// </summary>
    (int[] Ids, bool[] Assistant) EncodeChat(IReadOnlyList<ChatMessage> messages);
}

/// <summary>
/// <see cref="ITokenEncoder"/> over a model's <see cref="TextTokenizer"/> and its <see cref="ChatTemplate"/>.
/// Assistant tokens of a chat are found by formatting growing prefixes of the conversation: turn i's tokens
/// are those between the prompt that asks for it (messages before it + the generation prompt) and the
/// conversation up to and including it.
/// </summary>
public sealed class TextTokenizerEncoder(TextTokenizer tokenizer) : ITokenEncoder
{
    /// <summary>The wrapped tokenizer.</summary>
    public TextTokenizer Tokenizer { get; } = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));

    /// <inheritdoc/>
    public IReadOnlyList<int> Encode(string text) => Tokenizer.Encode(text, addBos: false);

    /// <inheritdoc/>
    public int? BosId => Tokenizer.BosId;

    /// <inheritdoc/>
    public int EosId => Tokenizer.EosIds.Count > 0 ? Tokenizer.EosIds[0]
        : throw new InvalidOperationException($"the tokenizer ({Tokenizer.Source}) has no end-of-sequence token");

    /// <inheritdoc/>
    public (int[] Ids, bool[] Assistant) EncodeChat(IReadOnlyList<ChatMessage> messages)
    {
        var template = Tokenizer.ChatTemplate;
        int[] full = [.. template.Encode(Tokenizer, template.Format(messages, addGenerationPrompt: false))];
        var assistant = new bool[full.Length];
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i].Role != "assistant") continue;
            var before = template.Encode(Tokenizer, template.Format(messages.Take(i).ToList(), addGenerationPrompt: true));
            var through = template.Encode(Tokenizer, template.Format(messages.Take(i + 1).ToList(), addGenerationPrompt: false));
            int start = CommonPrefix(before, full), end = CommonPrefix(through, full);
            for (int k = start; k < end; k++) assistant[k] = true;
        }
        return (full, assistant);
    }

    private static int CommonPrefix(IReadOnlyList<int> a, int[] b)
    {
        int n = Math.Min(a.Count, b.Length), i = 0;
        while (i < n && a[i] == b[i]) i++;
        return i;
    }
}

/// <summary>Limits and switches of <see cref="ExampleTokenizer"/>.</summary>
public sealed record TokenizeOptions
{
    /// <summary>Most tokens of the prompt (BOS included); a longer prompt loses its beginning, so the part next to the response stays.</summary>
    public int MaxSourceTokens { get; init; } = 192;

    /// <summary>Most tokens of the response (EOS included); a longer response loses its end.</summary>
    public int MaxTargetTokens { get; init; } = 128;

    /// <summary>Most tokens of a whole sequence (the model's context, --seq-len); longer sequences lose their end.</summary>
    public int MaxLength { get; init; } = 256;

    /// <summary>Take the loss on the prompt tokens too (off by default: only on the response, as the paper does).</summary>
    public bool TrainOnSource { get; init; }

    /// <summary>Check the limits.</summary>
    public TokenizeOptions Validate()
    {
        if (MaxSourceTokens < 1) throw new ArgumentOutOfRangeException(nameof(MaxSourceTokens), MaxSourceTokens, "must be at least 1");
        if (MaxTargetTokens < 1) throw new ArgumentOutOfRangeException(nameof(MaxTargetTokens), MaxTargetTokens, "must be at least 1");
        if (MaxLength < 2) throw new ArgumentOutOfRangeException(nameof(MaxLength), MaxLength, "must be at least 2");
        return this;
    }
}

/// <summary>
/// A tokenized example: input ids and labels of the same length; a label is the id itself where the loss is taken
/// and <see cref="ExampleTokenizer.IgnoreIndex"/> elsewhere (the usual shift happens in the loss).
/// </summary>
public sealed record TokenizedExample(int[] Ids, int[] Labels)
{
    /// <summary>Tokens.</summary>
    public int Length => Ids.Length;

    /// <summary>Tokens that count in the loss (labels of positions 1.., after the shift).</summary>
    public int TrainTokens
    {
        get
        {
            int n = 0;
            for (int i = 1; i < Labels.Length; i++) if (Labels[i] != ExampleTokenizer.IgnoreIndex) n++;
            return n;
        }
    }
}

/// <summary>Text examples to token ids and labels.</summary>
public static class ExampleTokenizer
{
    /// <summary>The label of positions that do not count in the loss (PyTorch's default ignore_index).</summary>
    public const int IgnoreIndex = -100;

    /// <summary>
    /// Tokenizes an example: a chat through <see cref="ITokenEncoder.EncodeChat"/>; otherwise BOS, then each
    /// segment encoded on its own (as the QLoRA code does with source and target), EOS after the last trainable segment. A two-segment example (prompt, response)
    /// is cut to <see cref="TokenizeOptions.MaxSourceTokens"/> + <see cref="TokenizeOptions.MaxTargetTokens"/>;
    /// then every sequence to <see cref="TokenizeOptions.MaxLength"/>. Returns null when no trainable token is left.
    /// </summary>
    public static TokenizedExample? Tokenize(DataExample example, ITokenEncoder tokenizer, TokenizeOptions options)
    {
        var ids = new List<int>();
        var train = new List<bool>();
        if (example.Messages is { } messages)
        {
            var (chatIds, assistant) = tokenizer.EncodeChat(messages);
            ids.AddRange(chatIds);
            train.AddRange(assistant.Select(a => a || options.TrainOnSource));
        }
        bool pair = example.Messages is null && example.Segments.Count == 2 && !example.Segments[0].Train && example.Segments[1].Train;
        if (pair)
        {
            var src = new List<int>();
            if (tokenizer.BosId is { } bos) src.Add(bos);
            src.AddRange(tokenizer.Encode(example.Segments[0].Text));
            if (src.Count > options.MaxSourceTokens)
            {
                // Keep BOS and the last tokens (the ones next to the response).
                int keep = options.MaxSourceTokens - (tokenizer.BosId is null ? 0 : 1);
                var tail = src.GetRange(src.Count - keep, keep);
                src = tokenizer.BosId is { } b ? [b, .. tail] : tail;
            }
            var tgt = new List<int>(tokenizer.Encode(example.Segments[1].Text)) { tokenizer.EosId };
            if (tgt.Count > options.MaxTargetTokens) tgt.RemoveRange(options.MaxTargetTokens, tgt.Count - options.MaxTargetTokens);
            ids.AddRange(src);
            train.AddRange(Enumerable.Repeat(options.TrainOnSource, src.Count));
            ids.AddRange(tgt);
            train.AddRange(Enumerable.Repeat(true, tgt.Count));
        }
        else if (example.Messages is null)
        {
            if (tokenizer.BosId is { } bos)
            {
                ids.Add(bos);
                train.Add(options.TrainOnSource);
            }
            int lastTrain = -1;
            for (int i = 0; i < example.Segments.Count; i++) if (example.Segments[i].Train) lastTrain = i;
            for (int i = 0; i < example.Segments.Count; i++)
            {
                var seg = example.Segments[i];
                var t = tokenizer.Encode(seg.Text);
                ids.AddRange(t);
                train.AddRange(Enumerable.Repeat(seg.Train || options.TrainOnSource, t.Count));
                if (i == lastTrain)
                {
                    ids.Add(tokenizer.EosId);
                    train.Add(true);
                }
            }
        }
        if (ids.Count > options.MaxLength)
        {
            ids.RemoveRange(options.MaxLength, ids.Count - options.MaxLength);
            train.RemoveRange(options.MaxLength, train.Count - options.MaxLength);
        }
        var labels = new int[ids.Count];
        for (int i = 0; i < labels.Length; i++) labels[i] = train[i] ? ids[i] : IgnoreIndex;
        var result = new TokenizedExample([.. ids], labels);
        return result.TrainTokens > 0 ? result : null;
    }

    /// <summary>
    /// Plain text for causal LM with packing: every document becomes BOS + tokens + EOS, the documents are
    /// concatenated and cut into sequences of exactly <paramref name="seqLen"/> tokens (the last one may be
    /// shorter; one of fewer than 2 tokens is dropped). Every token counts in the loss.
    /// </summary>
    public static List<TokenizedExample> Pack(IEnumerable<DataExample> documents, ITokenEncoder tokenizer, int seqLen)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(seqLen, 2);
        var stream = new List<int>();
        foreach (var doc in documents)
        {
            if (tokenizer.BosId is { } bos) stream.Add(bos);
            foreach (var seg in doc.Segments) stream.AddRange(tokenizer.Encode(seg.Text));
            stream.Add(tokenizer.EosId);
        }
        var result = new List<TokenizedExample>();
        for (int start = 0; start < stream.Count; start += seqLen)
        {
            int n = Math.Min(seqLen, stream.Count - start);
            if (n < 2) break;
            int[] ids = stream.GetRange(start, n).ToArray();
            result.Add(new TokenizedExample(ids, (int[])ids.Clone()));
        }
        return result;
    }

    /// <summary>Tokenizes a split (<see cref="Pack"/> for plain text); examples with no trainable token left are dropped.</summary>
    public static (List<TokenizedExample> Train, List<TokenizedExample> Eval) TokenizeSplit(
        DataSplit split, ITokenEncoder tokenizer, TokenizeOptions options)
    {
        options.Validate();
        if (split.IsPlainText)
            return (Pack(split.Train, tokenizer, options.MaxLength), Pack(split.Eval, tokenizer, options.MaxLength));
        List<TokenizedExample> Map(IReadOnlyList<DataExample> xs) =>
            xs.Select(x => Tokenize(x, tokenizer, options)).Where(t => t is not null).Select(t => t!).ToList();
        return (Map(split.Train), Map(split.Eval));
    }
}
