namespace QLoRA.Data;

/// <summary>How an instruction (and optional input) becomes the prompt text before the response.</summary>
public sealed record PromptTemplate(string Name, string WithInput, string WithoutInput)
{
    /// <summary>
    /// The Alpaca prompt as the QLoRA paper's code writes it (ALPACA_PROMPT_DICT): a one-sentence preamble, then
    /// "### Instruction:", "### Input:" and "### Response: ".
    /// </summary>
    public static readonly PromptTemplate Alpaca = new("alpaca",
        "Below is an instruction that describes a task, paired with an input that provides further context. " +
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: ",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\n{instruction}\n\n### Response: ");

    /// <summary>The Alpaca headings without the preamble (about 30 fewer tokens per example; the default).</summary>
    public static readonly PromptTemplate Compact = new("compact",
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n");

    /// <summary>The template called <paramref name="name"/> ("alpaca" or "compact").</summary>
    /// <exception cref="ArgumentException">Unknown name.</exception>
    public static PromptTemplate ByName(string name) => name switch
    {
        "alpaca" => Alpaca,
        "compact" => Compact,
        _ => throw new ArgumentException($"unknown prompt template \"{name}\" (expected alpaca or compact)", nameof(name)),
    };

    /// <summary>The prompt for an instruction and an optional input (empty or null: the no-input form).</summary>
    public string Format(string instruction, string? input)
    {
        // One pass over the template, so that a "{input}" inside the instruction text stays as it is.
        string template = string.IsNullOrEmpty(input) ? WithoutInput : WithInput;
        var sb = new System.Text.StringBuilder(template.Length + instruction.Length + (input?.Length ?? 0));
        int i = 0;
        while (i < template.Length)
        {
            if (string.CompareOrdinal(template, i, "{instruction}", 0, 13) == 0) { sb.Append(instruction); i += 13; }
            else if (string.CompareOrdinal(template, i, "{input}", 0, 7) == 0) { sb.Append(input); i += 7; }
            else sb.Append(template[i++]);
        }
        return sb.ToString();
    }
}
