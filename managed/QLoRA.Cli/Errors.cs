using System.Reflection;
using System.Text.RegularExpressions;

namespace QLoRA.Cli;

/// <summary>The process exit codes (docs/cli.md).</summary>
internal static class ExitCode
{
    /// <summary>Success.</summary>
    public const int Ok = 0;

    /// <summary>The work failed: a missing or malformed file, an I/O error, npm, the native core.</summary>
    public const int Failure = 1;

    /// <summary>The command line (or --config file) is wrong: unknown option or key, bad value, missing option.</summary>
    public const int Usage = 2;

    /// <summary>Stopped by Ctrl-C (SIGINT) or SIGTERM; finetune wrote a checkpoint first (128 + SIGINT, the shell convention).</summary>
    public const int Interrupted = 130;
}

/// <summary>A usage error: the command line or the config file is wrong (exit code 2).</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>One-line messages for exceptions.</summary>
internal static partial class Errors
{
    /// <summary>The exception that says what went wrong (not its wrappers).</summary>
    public static Exception Root(Exception e)
    {
        while (true)
        {
            switch (e)
            {
                case TypeInitializationException or TargetInvocationException when e.InnerException is not null:
                    e = e.InnerException;
                    continue;
                case AggregateException a when a.InnerExceptions.Count == 1:
                    e = a.InnerExceptions[0];
                    continue;
                default:
                    return e;
            }
        }
    }

    /// <summary>
    /// The message on one line: the first line only (native and libtorch messages carry their C++ stack after it),
    /// without ArgumentException's " (Parameter 'x')" suffix.
    /// </summary>
    public static string OneLine(Exception e)
    {
        string m = e.Message.Replace("\r", "", StringComparison.Ordinal);
        string first = m.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? e.GetType().Name;
        if (e is ArgumentException) first = ParameterSuffix().Replace(first, "");
        return first;
    }

    [GeneratedRegex(@" \(Parameter '[^']*'\)$")]
    private static partial Regex ParameterSuffix();
}
