namespace QLoRA.Tokenization;

/// <summary>One message of a conversation.</summary>
/// <param name="Role">"system", "user" or "assistant".</param>
/// <param name="Content">The text.</param>
public sealed record ChatMessage(string Role, string Content);

/// <summary>A piece of a formatted prompt: plain text, or a special token by its text (e.g. "&lt;s&gt;", "&lt;|eot_id|&gt;").</summary>
/// <param name="Text">The text.</param>
/// <param name="IsSpecial">True for a special token, encoded as its id (never split into pieces).</param>
public readonly record struct ChatSegment(string Text, bool IsSpecial);

/// <summary>
/// Built-in chat templates that turn instructions or conversations into token ids. Hugging Face
/// tokenizer_config.json templates are Jinja programs, which this library does not execute: a known template
/// family is recognized by its markers and the matching built-in template is used, saying so
/// (<see cref="FromJinja"/>); anything else falls back to <see cref="Alpaca"/>, also saying so.
/// </summary>
public sealed class ChatTemplate
{
    private readonly Func<IReadOnlyList<ChatMessage>, bool, List<ChatSegment>> _format;

    private ChatTemplate(string name, Func<IReadOnlyList<ChatMessage>, bool, List<ChatSegment>> format)
    {
        Name = name;
        _format = format;
    }

    /// <summary>"alpaca", "llama2", "llama3" or "chatml".</summary>
    public string Name { get; }

    /// <summary>The Alpaca instruction format (Stanford Alpaca / the QLoRA paper's default).</summary>
    public static ChatTemplate Alpaca { get; } = new("alpaca", FormatAlpaca);

    /// <summary>Llama 2 chat: <c>&lt;s&gt;[INST] &lt;&lt;SYS&gt;&gt;...&lt;&lt;/SYS&gt;&gt; user [/INST] answer &lt;/s&gt;</c>.</summary>
    public static ChatTemplate Llama2 { get; } = new("llama2", FormatLlama2);

    /// <summary>Llama 3 instruct: <c>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\ncontent&lt;|eot_id|&gt;</c>.</summary>
    public static ChatTemplate Llama3 { get; } = new("llama3", FormatLlama3);

    /// <summary>ChatML (SmolLM, Qwen, ...): <c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n</c>.</summary>
    public static ChatTemplate ChatMl { get; } = new("chatml", FormatChatMl);

    /// <summary>Every built-in template.</summary>
    public static IReadOnlyList<ChatTemplate> BuiltIn { get; } = [Alpaca, Llama2, Llama3, ChatMl];

    /// <summary>A built-in template by name.</summary>
    /// <exception cref="ArgumentException">Unknown name (the message lists the known ones).</exception>
    public static ChatTemplate ByName(string name) =>
        BuiltIn.FirstOrDefault(t => t.Name == name)
        ?? throw new ArgumentException($"unknown chat template \"{name}\" (built in: {string.Join(", ", BuiltIn.Select(t => t.Name))})", nameof(name));

    /// <summary>
    /// The built-in template for a tokenizer_config.json Jinja <c>chat_template</c>: recognized by its markers
    /// ([INST], &lt;|start_header_id|&gt;, &lt;|im_start|&gt;), else Alpaca. Logs which one is used and why.
    /// </summary>
    public static ChatTemplate FromJinja(string jinja, string source, Action<string>? log = null)
    {
        ChatTemplate t = jinja.Contains("<|start_header_id|>", StringComparison.Ordinal) ? Llama3
            : jinja.Contains("<|im_start|>", StringComparison.Ordinal) ? ChatMl
            : jinja.Contains("[INST]", StringComparison.Ordinal) ? Llama2
            : Alpaca;
        log?.Invoke(t == Alpaca
            ? $"{source}: the chat_template is a Jinja program, which is not executed here, and matches no built-in template; falling back to the alpaca template"
            : $"{source}: the chat_template is a Jinja program, which is not executed here; its markers match the built-in {t.Name} template, used instead");
        return t;
    }

    /// <summary>The prompt for one instruction (with optional input), ending where the answer starts.</summary>
    public List<ChatSegment> FormatInstruction(string instruction, string? input = null)
    {
        string content = string.IsNullOrEmpty(input) ? instruction : instruction + "\n\n" + input;
        if (this == Alpaca) return FormatAlpacaInstruction(instruction, input);
        return Format([new ChatMessage("user", content)], addGenerationPrompt: true);
    }

    /// <summary>A conversation; with <paramref name="addGenerationPrompt"/> it ends where the assistant's answer starts.</summary>
    public List<ChatSegment> Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        foreach (var m in messages)
            if (m.Role is not ("system" or "user" or "assistant"))
                throw new ArgumentException($"chat role \"{m.Role}\" is not system, user or assistant", nameof(messages));
        return _format(messages, addGenerationPrompt);
    }

    /// <summary>Token ids of formatted segments: text through the tokenizer (no BOS), special tokens as their ids.</summary>
    /// <exception cref="InvalidOperationException">The template needs a special token the tokenizer does not have.</exception>
    public List<int> Encode(TextTokenizer tokenizer, IReadOnlyList<ChatSegment> segments)
    {
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        void Flush()
        {
            // Adjacent text segments are one chunk, as the reference tokenizers see them (SentencePiece adds its
            // dummy prefix once per chunk).
            if (text.Length > 0) ids.AddRange(tokenizer.Encode(text.ToString(), addBos: false));
            text.Clear();
        }
        foreach (var s in segments)
        {
            if (!s.IsSpecial)
            {
                text.Append(s.Text);
                continue;
            }
            Flush();
            if (s.Text == "<bos>" && tokenizer.BosId is { } bos) ids.Add(bos);
            else if (s.Text == "<eos>" && tokenizer.EosIds.Count > 0) ids.Add(tokenizer.EosIds[0]);
            else if (tokenizer.SpecialTokens.TryGetValue(s.Text, out int id)) ids.Add(id);
            else
                throw new InvalidOperationException(
                    $"the {Name} chat template needs the special token \"{s.Text}\", which the tokenizer ({tokenizer.Source}) does not have");
        }
        Flush();
        return ids;
    }

    private const string AlpacaPreamble = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n";
    private const string AlpacaPreambleInput = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n";

    private static List<ChatSegment> FormatAlpacaInstruction(string instruction, string? input) =>
        string.IsNullOrEmpty(input)
            ? [new("<bos>", true), new(AlpacaPreamble + "### Instruction:\n" + instruction + "\n\n### Response:\n", false)]
            : [new("<bos>", true), new(AlpacaPreambleInput + "### Instruction:\n" + instruction + "\n\n### Input:\n" + input + "\n\n### Response:\n", false)];

    private static List<ChatSegment> FormatAlpaca(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        var segs = new List<ChatSegment> { new("<bos>", true) };
        var sb = new System.Text.StringBuilder();
        foreach (var m in messages)
        {
            switch (m.Role)
            {
                case "system": sb.Append(m.Content).Append("\n\n"); break;
                case "user": sb.Append("### Instruction:\n").Append(m.Content).Append("\n\n"); break;
                case "assistant": sb.Append("### Response:\n").Append(m.Content).Append("\n\n"); break;
            }
        }
        if (!messages.Any(m => m.Role == "system")) sb.Insert(0, AlpacaPreamble);
        if (addGenerationPrompt) sb.Append("### Response:\n");
        segs.Add(new(sb.ToString(), false));
        return segs;
    }

    private static List<ChatSegment> FormatLlama2(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        // Meta's chat format: the system prompt goes inside the first [INST] block.
        var segs = new List<ChatSegment>();
        string? system = messages.Count > 0 && messages[0].Role == "system" ? messages[0].Content : null;
        bool first = true;
        foreach (var m in messages.Skip(system is null ? 0 : 1))
        {
            if (m.Role == "user")
            {
                string content = first && system is not null ? $"<<SYS>>\n{system}\n<</SYS>>\n\n{m.Content}" : m.Content;
                segs.Add(new("<bos>", true));
                segs.Add(new($"[INST] {content.Trim()} [/INST]", false));
                first = false;
            }
            else if (m.Role == "assistant")
            {
                segs.Add(new($" {m.Content.Trim()} ", false));
                segs.Add(new("<eos>", true));
            }
            else throw new ArgumentException("the llama2 chat template takes a system message only first");
        }
        _ = addGenerationPrompt; // the prompt already ends with [/INST]
        return segs;
    }

    private static List<ChatSegment> FormatLlama3(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        var segs = new List<ChatSegment> { new("<bos>", true) };
        foreach (var m in messages)
        {
            segs.Add(new("<|start_header_id|>", true));
            segs.Add(new(m.Role, false));
            segs.Add(new("<|end_header_id|>", true));
            segs.Add(new("\n\n" + m.Content.Trim(), false));
            segs.Add(new("<|eot_id|>", true));
        }
        if (addGenerationPrompt)
        {
            segs.Add(new("<|start_header_id|>", true));
            segs.Add(new("assistant", false));
            segs.Add(new("<|end_header_id|>", true));
            segs.Add(new("\n\n", false));
        }
        return segs;
    }

    private static List<ChatSegment> FormatChatMl(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        var segs = new List<ChatSegment>();
        foreach (var m in messages)
        {
            segs.Add(new("<|im_start|>", true));
            segs.Add(new(m.Role + "\n" + m.Content, false));
            segs.Add(new("<|im_end|>", true));
            segs.Add(new("\n", false));
        }
        if (addGenerationPrompt)
        {
            segs.Add(new("<|im_start|>", true));
            segs.Add(new("assistant\n", false));
        }
        return segs;
    }
}
