using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace QLoRA.Cli;

/// <summary>
/// The `qlora` command tree and how a command line runs: options from flags or a --config file (flags win), one-line
/// errors with distinct exit codes (<see cref="ExitCode"/>), --json results, help with examples.
/// Contract: ../../../shared/CLI.md; manual: docs/cli.md.
/// </summary>
internal sealed partial class App
{
    /// <summary>--json (every command).</summary>
    public readonly Option<bool> Json = new("--json")
    {
        Description = "Print the result as one JSON object on stdout (its last line); progress and logs go to stderr", Recursive = true,
    };

    /// <summary>--verbose (every command).</summary>
    public readonly Option<bool> Verbose = new("--verbose", "-v") { Description = "Show the stack trace of an error", Recursive = true };

    /// <summary>--quiet (every command).</summary>
    public readonly Option<bool> Quiet = new("--quiet", "-q") { Description = "No progress or log lines on stderr (errors and the result only)", Recursive = true };

    /// <summary>--config (every command).</summary>
    public readonly Option<string?> Config = new("--config")
    {
        Description = "Read options from a JSON file (keys: option names without dashes); flags on the command line win", Recursive = true, HelpName = "FILE",
    };

    private readonly Dictionary<Command, (string Args, string What)[]> _examples = [];
    private readonly Dictionary<Command, Func<ParseResult, string?>> _implicitConfig = [];

    public App()
    {
        Root = new RootCommand("qlora: QLoRA fine-tuning for .NET. LLaMA-family models with frozen 4-bit NF4 weights and trained LoRA adapters, without Python.")
        {
            Json, Verbose, Quiet, Config,
        };
        Root.SetAction(r =>
        {
            Root.Parse(["--help"]).Invoke();
            return ExitCode.Ok;
        });
        // The command groups (one line each). A group written against the (RootCommand, --json, --verbose) signature
        // registers with AddGroup, e.g. AddGroup(BenchCommands.Add, ("bench --suite kernels", "..."));
        EnvCommands.Add(this);
        ModelCommands.Add(this);
        TrainCommands.Add(this);
        AddGroup(BenchCommands.Add,
            ("bench --suite train,kernels", "QLoRA vs LoRA training step (stories15M, 125M, 350M, 1.1B; seq 256, 512) and the 4-bit kernels, as markdown tables"),
            ("bench --suite train --models 125m --seq 256 --quick --json", "one model, one timed step per configuration, as JSON"),
            ("bench --suite models --no-load-probe", "perplexity fp32/NF4/FP4/Int4 and generation speed of stories15M"));
        CustomizeHelp();
    }

    /// <summary>The root command.</summary>
    public RootCommand Root { get; }

    /// <summary>Examples shown by `qlora CMD --help` (a command line after "qlora ", and what it does).</summary>
    public IReadOnlyDictionary<Command, (string Args, string What)[]> Examples => _examples;

    /// <summary>Adds a command with its help examples.</summary>
    public void Add(Command command, params (string Args, string What)[] examples)
    {
        Root.Add(command);
        _examples[command] = examples;
    }

    /// <summary>
    /// Adds the commands a group's <c>Add(RootCommand, Option&lt;bool&gt; json, Option&lt;bool&gt; verbose)</c> registers (its
    /// actions report errors through <see cref="global::Cli.Run"/>), with help examples matched to them by their first word.
    /// </summary>
    public void AddGroup(Action<RootCommand, Option<bool>, Option<bool>> add, params (string Args, string What)[] examples)
    {
        var before = Root.Subcommands.ToHashSet();
        add(Root, Json, Verbose);
        foreach (var c in Root.Subcommands.Where(c => !before.Contains(c) && !c.Hidden))
            _examples[c] = examples.Where(x => x.Args.Split(' ')[0] == c.Name).ToArray();
    }

    /// <summary>A config file a command reads when --config is not given (finetune --resume: the run's saved options).</summary>
    public void ImplicitConfig(Command command, Func<ParseResult, string?> path) => _implicitConfig[command] = path;

    /// <summary>The options of <paramref name="command"/> a config file may set (not help, --json, --verbose, --quiet, --config).</summary>
    public IReadOnlyList<Option> Settable(Command command) =>
        command.Options.Where(o => o is not HelpOption && o != Json && o != Verbose && o != Quiet && o != Config && !o.Hidden).ToList();

    // ------------------------------------------------------------------ running

    /// <summary>Parses and runs a command line; returns the exit code.</summary>
    public int Main(string[] args)
    {
        bool json = args.Contains("--json");
        bool verbose = args.Contains("--verbose") || args.Contains("-v");
        Command? parsed = null;
        try
        {
            string[] original = args;
            var first = Root.Parse(args);
            if (first.Action is HelpWithExamples || first.GetResult(Root.Options.OfType<VersionOption>().Single()) is not null) return first.Invoke();
            var command = first.CommandResult.Command;
            parsed = command;
            string? config = first.GetResult(Config) is { } cr && cr.Tokens.Count > 0 ? first.GetValue(Config) : null;
            config ??= _implicitConfig.TryGetValue(command, out var implicitPath) && first.Errors.Count == 0 ? implicitPath(first) : null;
            if (config is not null)
                args = ConfigFile.Apply(config, command, Settable(command), first, args);
            var parse = ReferenceEquals(args, original) ? first : Root.Parse(args);
            if (parse.Errors.Count > 0)
                return Fail(ExitCode.Usage, ParseErrorLine(parse), json, null, verbose, parse.CommandResult.Command);
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null });
        }
        catch (Exception e)
        {
            return Failed(e, json, verbose, parsed);
        }
    }

    /// <summary>Runs a command's body with the Ui its flags ask for, turning exceptions into one-line errors.</summary>
    public int Run(ParseResult r, Func<Ui, int> body)
    {
        var ui = new Ui(r.GetValue(Json), r.GetValue(Quiet), r.GetValue(Verbose));
        try
        {
            return body(ui);
        }
        catch (Exception e)
        {
            return Failed(e, ui.Json, ui.Verbose, r.CommandResult.Command);
        }
    }

    /// <summary>Reports an exception as the one-line error of <paramref name="command"/>; returns the exit code.</summary>
    internal static int Failed(Exception e, bool json, bool verbose, Command? command)
    {
        var root = Errors.Root(e);
        return root switch
        {
            UsageException => Fail(ExitCode.Usage, root.Message, json, verbose ? e : null, verbose, command),
            OperationCanceledException => Fail(ExitCode.Interrupted, "interrupted", json, verbose ? e : null, verbose, command),
            _ => Fail(ExitCode.Failure, Errors.OneLine(root), json, verbose ? e : null, verbose, command),
        };
    }

    // One line on stderr (plus the trace with --verbose); with --json also {"error", "exit_code"} on stdout.
    private static int Fail(int code, string message, bool json, Exception? trace, bool verbose, Command? command)
    {
        string line = $"qlora: error: {message}";
        if (code == ExitCode.Usage)
            line += command is null or RootCommand ? " (see 'qlora --help')" : $" (see 'qlora {command.Name} --help')";
        Console.Error.WriteLine(line);
        if (trace is not null) Console.Error.WriteLine(trace);
        if (json) Console.Out.WriteLine(Ui.JsonLine(new JsonObject { ["error"] = message, ["exit_code"] = code }));
        return code;
    }

    // The parser's errors as one line, in the same words as the option checks: "--steps abc: expected an integer".
    private static string ParseErrorLine(ParseResult parse)
    {
        // The first error only: the rest usually follow from it (an unknown option's value is an unknown argument).
        var command = parse.CommandResult.Command;
        string m = parse.Errors[0].Message.TrimEnd('.');
        {
            if (CannotParse().Match(m) is { Success: true } cp)
                m = $"{cp.Groups["opt"].Value} {cp.Groups["arg"].Value}: expected {TypeWord(cp.Groups["type"].Value)}";
            else if (Unrecognized().Match(m) is { Success: true } un)
            {
                string token = un.Groups["tok"].Value;
                string? near = token.StartsWith('-')
                    ? Suggest.Closest(token, command.Options.SelectMany(o => o.Aliases.Prepend(o.Name)).Where(n => n.StartsWith("--", StringComparison.Ordinal)))
                    : Suggest.Closest(token, command.Subcommands.Where(c => !c.Hidden).Select(c => c.Name));
                m = (token.StartsWith('-') ? $"unknown option {token}" : $"unknown command or argument '{token}'") +
                    (near is not null ? $" (did you mean {near}?)" : "");
            }
            else if (Required().Match(m) is { Success: true } rq)
                m = $"{rq.Groups["opt"].Value} is required";
        }
        return m;
    }

    private static string TypeWord(string type) => type switch
    {
        "System.Int32" or "System.Int64" or "System.Nullable`1[System.Int32]" or "System.Nullable`1[System.Int64]" => "an integer",
        "System.UInt64" => "a non-negative integer",
        "System.Double" or "System.Nullable`1[System.Double]" => "a number",
        "System.Boolean" => "true or false",
        _ => type,
    };

    [GeneratedRegex(@"^Cannot parse argument '(?<arg>.*)' for option '(?<opt>[^']*)' as expected type '(?<type>[^']*)'")]
    private static partial Regex CannotParse();

    [GeneratedRegex(@"^Option '(?<opt>[^']*)' is required$")]
    private static partial Regex Required();

    [GeneratedRegex(@"^Unrecognized command or argument '(?<tok>.*)'$")]
    private static partial Regex Unrecognized();

    // ------------------------------------------------------------------ help

    // Help = System.CommandLine's own text + "Examples:" (every command) + exit codes and the manual.
    private void CustomizeHelp()
    {
        var help = Root.Options.OfType<HelpOption>().Single();
        help.Action = new HelpWithExamples((HelpAction)help.Action!, this);
    }

    /// <summary>The help text after System.CommandLine's sections.</summary>
    public void WriteHelpFooter(Command command, TextWriter output)
    {
        if (!_examples.TryGetValue(command, out var list) && command == Root)
            list = [.. _examples.Values.Select(l => l[0])];
        if (list is { Length: > 0 })
        {
            output.WriteLine("Examples:");
            foreach (var (args, what) in list)
            {
                output.WriteLine($"  # {what}");
                output.WriteLine($"  qlora {args}");
            }
            output.WriteLine();
        }
        output.WriteLine("Exit codes: 0 success, 1 failure (bad file, I/O, npm), 2 usage error (bad option or config key), 130 interrupted.");
        output.WriteLine(command == Root
            ? "Every command takes --json, --quiet, --verbose and --config FILE. Manual: docs/cli.md."
            : "Options can also come from --config FILE (JSON, keys without dashes); flags win. Manual: docs/cli.md.");
    }

    private sealed class HelpWithExamples(HelpAction inner, App app) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            int rc = inner.Invoke(parseResult);
            app.WriteHelpFooter(parseResult.CommandResult.Command, parseResult.InvocationConfiguration.Output);
            return rc;
        }
    }
}
