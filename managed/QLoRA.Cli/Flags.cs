using System.CommandLine;
using System.Globalization;
using System.Numerics;

namespace QLoRA.Cli;

/// <summary>
/// Option factories with their checks: a bad value is a parse error ("--steps 0: must be at least 1"), reported as a
/// usage error (exit code 2) before any work starts.
/// </summary>
internal static class Flags
{
    /// <summary>A value in [min, max] (integers).</summary>
    public static Option<T> Int<T>(string name, string description, T defaultValue, T min, T? max = null) where T : struct, IBinaryInteger<T>
    {
        var o = new Option<T>(name) { Description = description, DefaultValueFactory = _ => defaultValue, HelpName = "N" };
        return Check(o, v => Range(v, min, max));
    }

    /// <summary>An optional integer in [min, max] (null when not given).</summary>
    public static Option<T?> OptionalInt<T>(string name, string description, T min, T? max = null) where T : struct, IBinaryInteger<T>
    {
        var o = new Option<T?>(name) { Description = description, HelpName = "N" };
        return Check(o, v => v is { } x ? Range(x, min, max) : null);
    }

    private static string? Range<T>(T v, T min, T? max) where T : struct, IBinaryInteger<T>
    {
        if (max is { } hi && (v < min || v > hi)) return $"must be in [{min}, {hi}]";
        return v < min ? $"must be at least {min}" : null;
    }

    /// <summary>A finite number with a lower bound (inclusive or not) and an optional upper bound.</summary>
    public static Option<double> Number(string name, string description, double defaultValue, double min, bool minExclusive = false,
                                        double max = double.PositiveInfinity, bool maxExclusive = false)
    {
        var o = new Option<double>(name) { Description = description, DefaultValueFactory = _ => defaultValue, HelpName = "X" };
        return Check(o, v => NumberProblem(v, min, minExclusive, max, maxExclusive));
    }

    /// <summary>An optional finite number (null when not given).</summary>
    public static Option<double?> OptionalNumber(string name, string description, double min, bool minExclusive = false)
    {
        var o = new Option<double?>(name) { Description = description, HelpName = "X" };
        return Check(o, v => v is { } x ? NumberProblem(x, min, minExclusive, double.PositiveInfinity, false) : null);
    }

    private static string? NumberProblem(double v, double min, bool minExclusive, double max, bool maxExclusive)
    {
        if (!double.IsFinite(v)) return "must be a finite number";
        bool low = minExclusive ? v <= min : v < min;
        bool high = maxExclusive ? v >= max : v > max;
        if (!low && !high) return null;
        string lo = F(min), hi = F(max);
        if (double.IsPositiveInfinity(max))
            return minExclusive ? $"must be greater than {lo}" : $"must be at least {lo}";
        return $"must be in {(minExclusive ? "(" : "[")}{lo}, {hi}{(maxExclusive ? ")" : "]")}";
    }

    private static string F(double v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>One of <paramref name="values"/> (shown in the help and offered to shell completion).</summary>
    public static Option<string> Choice(string name, string description, string defaultValue, params string[] values)
    {
        var o = new Option<string>(name) { Description = description, DefaultValueFactory = _ => defaultValue, HelpName = string.Join('|', values) };
        o.CompletionSources.Add(values);
        return Check(o, v => values.Contains(v, StringComparer.Ordinal) ? null : $"expected {OneOf(values)}");
    }

    /// <summary>An optional choice (null when not given).</summary>
    public static Option<string?> OptionalChoice(string name, string description, params string[] values)
    {
        var o = new Option<string?>(name) { Description = description, HelpName = string.Join('|', values) };
        o.CompletionSources.Add(values);
        return Check(o, v => v is null || values.Contains(v, StringComparer.Ordinal) ? null : $"expected {OneOf(values)}");
    }

    /// <summary>"a, b or c".</summary>
    public static string OneOf(IReadOnlyList<string> values) =>
        values.Count == 1 ? values[0] : string.Join(", ", values.Take(values.Count - 1)) + " or " + values[^1];

    /// <summary>A string (a path, a prompt, ...).</summary>
    public static Option<string> Text(string name, string description, string? defaultValue = null, bool required = false, string? helpName = null)
    {
        var o = new Option<string>(name) { Description = description, Required = required, HelpName = helpName };
        if (defaultValue is not null) o.DefaultValueFactory = _ => defaultValue;
        return o;
    }

    /// <summary>An optional string (null when not given).</summary>
    public static Option<string?> OptionalText(string name, string description, string? helpName = null) =>
        new(name) { Description = description, HelpName = helpName };

    /// <summary>A flag (--x, --x true, --x false).</summary>
    public static Option<bool> Switch(string name, string description, bool defaultValue = false)
    {
        var o = new Option<bool>(name) { Description = description };
        if (defaultValue) o.DefaultValueFactory = _ => true;
        return o;
    }

    /// <summary>Adds a check: <paramref name="problem"/> returns null for a good value, else what is wrong with it.</summary>
    public static Option<T> Check<T>(Option<T> option, Func<T, string?> problem)
    {
        option.Validators.Add(result =>
        {
            if (result.Implicit) return;                // defaults are valid by construction
            T value;
            try
            {
                value = result.GetValueOrDefault<T>();
            }
            catch (InvalidOperationException)
            {
                return;                                 // not convertible: the parser reports that itself
            }
            if (problem(value) is { } p)
                result.AddError($"{option.Name} {Show(value)}: {p}");
        });
        return option;
    }

    private static string Show<T>(T value) => value switch
    {
        null => "(none)",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };
}
