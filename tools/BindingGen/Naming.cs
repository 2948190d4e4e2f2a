using System.Text;

namespace QLoRA.BindingGen;

/// <summary>How C names become C# names (deterministic, documented in README.md).</summary>
public static class Naming
{
    private static readonly HashSet<string> Keywords =
    [
        "abstract", "as", "base", "bool", "break", "byte", "case", "catch", "char", "checked", "class", "const",
        "continue", "decimal", "default", "delegate", "do", "double", "else", "enum", "event", "explicit", "extern",
        "false", "finally", "fixed", "float", "for", "foreach", "goto", "if", "implicit", "in", "int", "interface",
        "internal", "is", "lock", "long", "namespace", "new", "null", "object", "operator", "out", "override",
        "params", "private", "protected", "public", "readonly", "ref", "return", "sbyte", "sealed", "short",
        "sizeof", "stackalloc", "static", "string", "struct", "switch", "this", "throw", "true", "try", "typeof",
        "uint", "ulong", "unchecked", "unsafe", "ushort", "using", "virtual", "void", "volatile", "while",
    ];

    /// <summary>"qlora_q4_info" -> "QLoraQ4Info", "n_threads" -> "NThreads", "AVX512_BF16" -> "Avx512Bf16".</summary>
    public static string Pascal(string snake)
    {
        var sb = new StringBuilder(snake.Length);
        foreach (string part in snake.Split('_', StringSplitOptions.RemoveEmptyEntries))
        {
            if (sb.Length == 0 && part.Equals("qlora", StringComparison.OrdinalIgnoreCase))
            {
                sb.Append("QLora");
                continue;
            }
            sb.Append(char.ToUpperInvariant(part[0]));
            sb.Append(part[1..].ToLowerInvariant());
        }
        if (sb.Length == 0) throw new BindingGenException($"cannot make a C# name from '{snake}'");
        if (char.IsDigit(sb[0])) sb.Insert(0, '_');
        return sb.ToString();
    }

    /// <summary>"qlora_context_t" -> "QLoraContextHandle".</summary>
    public static string Handle(string cName) => Pascal(cName.EndsWith("_t", StringComparison.Ordinal) ? cName[..^2] : cName) + "Handle";

    /// <summary>A C identifier usable as a C# parameter name.</summary>
    public static string Parameter(string cName) => Keywords.Contains(cName) ? "@" + cName : cName;

    /// <summary>
    /// Enum member names: the constants' longest common prefix up to an underscore is dropped
    /// (QLORA_ISA_AVX2 -> Avx2), keeping at least one character of every name and no leading digit.
    /// </summary>
    public static IReadOnlyList<string> EnumMembers(IReadOnlyList<string> constants)
    {
        int prefix = 0;
        if (constants.Count > 0)
        {
            string first = constants[0];
            for (int i = 0; i < first.Length; i++)
            {
                if (first[i] != '_') continue;
                int candidate = i + 1;
                if (constants.All(c => c.Length > candidate && c.StartsWith(first[..candidate], StringComparison.Ordinal)
                                       && !char.IsDigit(c[candidate])))
                    prefix = candidate;
                else
                    break;
            }
        }
        var names = constants.Select(c => Pascal(c[prefix..])).ToList();
        var duplicate = names.GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
            throw new BindingGenException($"enum constants {string.Join(", ", constants)} map to the same C# name '{duplicate.Key}'");
        return names;
    }
}
