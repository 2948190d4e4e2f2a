using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Cli;

/// <summary>
/// Options from a JSON file (<c>--config FILE</c>): one object whose keys are the command's option names without the
/// dashes (<c>"batch_size"</c> or <c>"batch-size"</c>) and whose values are JSON numbers, strings, booleans or arrays
/// of strings (repeatable options). A key the command does not have, or a value of the wrong type, is a usage
/// error naming the file and the key. Flags given on the command line win over the file. The values become
/// ordinary command-line tokens, so they pass exactly the checks flags pass.
/// </summary>
internal static class ConfigFile
{
    /// <summary>The file's key for an option: its name without the leading dashes, dashes as underscores.</summary>
    public static string Key(Option option) => option.Name.TrimStart('-').Replace('-', '_');

    private static string Normalize(string key) => key.Trim().TrimStart('-').Replace('-', '_').ToLowerInvariant();

    /// <summary>
    /// The arguments with the file's values added, right after the command's name, for every option of
    /// <paramref name="command"/> that <paramref name="given"/> (the parse of the original arguments) did not get.
    /// </summary>
    /// <exception cref="UsageException">The file is missing, is not a JSON object, or has an unknown key or a wrong value.</exception>
    public static string[] Apply(string path, Command command, IReadOnlyCollection<Option> settable, ParseResult given, string[] args)
    {
        JsonObject obj = Read(path);
        var byKey = settable.ToDictionary(o => Normalize(o.Name), o => o);
        var injected = new List<string>();
        foreach (var (rawKey, value) in obj)
        {
            if (!byKey.TryGetValue(Normalize(rawKey), out var option))
            {
                string? near = Suggest.Closest(Normalize(rawKey), byKey.Keys);
                throw new UsageException(
                    $"{path}: unknown key \"{rawKey}\" for qlora {command.Name}" +
                    (near is not null ? $" (did you mean \"{near}\"?)" : $" (keys are the option names of 'qlora {command.Name} --help' without the dashes)"));
            }
            if (value is null) continue;   // null: the option's default
            if (given.GetResult(option) is OptionResult { Implicit: false }) continue;   // the flag wins
            foreach (string v in Values(path, rawKey, option, value))
                injected.Add($"{option.Name}={v}");
        }
        if (injected.Count == 0) return args;
        int at = Array.IndexOf(args, command.Name);
        if (at < 0) throw new UsageException($"--config {path}: put the command name ({command.Name}) before its options");
        return [.. args[..(at + 1)], .. injected, .. args[(at + 1)..]];
    }

    private static JsonObject Read(string path)
    {
        if (!File.Exists(path)) throw new UsageException($"--config {path}: no such file");
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(File.ReadAllText(path), documentOptions: new JsonDocumentOptions
            {
                CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true,
            });
        }
        catch (JsonException e)
        {
            throw new UsageException($"{path}: not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {FirstSentence(e.Message)}");
        }
        return node as JsonObject ?? throw new UsageException($"{path}: expected a JSON object of option names and values, found {Kind(node)}");
    }

    private static string FirstSentence(string message)
    {
        int dot = message.IndexOf(". ", StringComparison.Ordinal);
        return dot > 0 ? message[..dot] : message.TrimEnd('.');
    }

    // The command-line spelling of a JSON value for this option (checked against the option's type).
    private static IEnumerable<string> Values(string path, string key, Option option, JsonNode value)
    {
        Type t = Nullable.GetUnderlyingType(option.ValueType) ?? option.ValueType;
        string Wrong(string expected) => $"{path}: key \"{key}\": expected {expected}, found {Kind(value)} {value.ToJsonString()}";
        if (t == typeof(string[]))
        {
            if (value is JsonValue one && one.TryGetValue(out string? s1)) return [s1];
            if (value is not JsonArray arr) throw new UsageException(Wrong("an array of strings"));
            return arr.Select(x => x is JsonValue v && v.TryGetValue(out string? s) ? s : throw new UsageException(Wrong("an array of strings"))).ToList();
        }
        if (value is not JsonValue jv) throw new UsageException(Wrong(Expected(t)));
        if (t == typeof(string))
            return jv.TryGetValue(out string? s) ? [s] : throw new UsageException(Wrong("a string"));
        if (t == typeof(bool))
            return jv.TryGetValue(out bool b) ? [b ? "true" : "false"] : throw new UsageException(Wrong("true or false"));
        if (t == typeof(double) || t == typeof(float))
            return jv.TryGetValue(out double d) ? [d.ToString("R", CultureInfo.InvariantCulture)] : throw new UsageException(Wrong("a number"));
        if (t == typeof(int) || t == typeof(long) || t == typeof(ulong))
        {
            if (jv.GetValueKind() == JsonValueKind.Number)
            {
                if (t == typeof(ulong) && jv.TryGetValue(out ulong u)) return [u.ToString(CultureInfo.InvariantCulture)];
                if (jv.TryGetValue(out long l)) return [l.ToString(CultureInfo.InvariantCulture)];
            }
            throw new UsageException(Wrong("an integer"));
        }
        throw new InvalidOperationException($"option {option.Name} has a type ({option.ValueType}) that config files do not support");
    }

    private static string Expected(Type t) =>
        t == typeof(string) ? "a string" : t == typeof(bool) ? "true or false" : t == typeof(double) ? "a number" : "an integer";

    private static string Kind(JsonNode? n) => n switch
    {
        null => "null",
        JsonObject => "an object",
        JsonArray => "an array",
        JsonValue v => v.GetValueKind() switch
        {
            JsonValueKind.String => "a string",
            JsonValueKind.Number => "a number",
            JsonValueKind.True or JsonValueKind.False => "a boolean",
            _ => "a value",
        },
        _ => "a value",
    };

    /// <summary>
    /// The effective options of a parsed command as a config file (every option in <paramref name="settable"/>, its
    /// value whether given or default; <paramref name="paths"/> made absolute so the file works from any folder).
    /// </summary>
    public static JsonObject Effective(ParseResult r, IEnumerable<Option> settable, IReadOnlySet<Option> paths)
    {
        var o = new JsonObject();
        foreach (var option in settable)
        {
            object? v = r.GetResult(option) is { } res ? res.GetValueOrDefault<object?>() : null;
            if (v is string s && paths.Contains(option) && s != "default") v = Path.GetFullPath(s);
            o[Key(option)] = v switch
            {
                null => null,
                string s2 => s2,
                bool b => b,
                int i => i,
                long l => l,
                ulong u => u,
                double d => d,
                string[] a => new JsonArray(a.Select(x => (JsonNode)x).ToArray()),
                _ => throw new InvalidOperationException($"option {option.Name}: cannot write a {v.GetType()} to a config file"),
            };
        }
        return o;
    }
}

/// <summary>"Did you mean" suggestions (edit distance).</summary>
internal static class Suggest
{
    /// <summary>The candidate closest to <paramref name="word"/> when it is close enough to be a typo, else null.</summary>
    public static string? Closest(string word, IEnumerable<string> candidates)
    {
        string? best = null;
        int bestD = int.MaxValue;
        foreach (string c in candidates)
        {
            int d = Distance(word, c);
            if (d < bestD)
            {
                bestD = d;
                best = c;
            }
        }
        return best is not null && bestD <= Math.Max(1, Math.Min(3, word.Length / 3)) ? best : null;
    }

    private static int Distance(string a, string b)
    {
        var prev = new int[b.Length + 1];
        var cur = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) prev[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            cur[0] = i;
            for (int j = 1; j <= b.Length; j++)
                cur[j] = Math.Min(Math.Min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            (prev, cur) = (cur, prev);
        }
        return prev[b.Length];
    }
}
