using System.Text.Json;
using System.Text.Json.Nodes;

using Spectre.Console;

namespace QLoRA.Cli;

/// <summary>
/// What a command shows. Results go to stdout (one JSON object with --json, else the command's text); everything
/// else goes to stderr: a live Spectre.Console progress display when stderr is an interactive terminal, else plain
/// log lines (nothing with --quiet). Errors are printed by <see cref="App"/>.
/// </summary>
internal sealed class Ui
{
    private readonly IAnsiConsole? _live;
    private Work? _work;

    public Ui(bool json, bool quiet, bool verbose)
    {
        Json = json;
        Quiet = quiet;
        Verbose = verbose;
        if (!quiet && StderrIsInteractive())
            _live = AnsiConsole.Create(new AnsiConsoleSettings
            {
                Out = new AnsiConsoleOutput(Console.Error),
                Ansi = AnsiSupport.Detect,
                ColorSystem = ColorSystemSupport.Detect,
                Interactive = InteractionSupport.Yes,
            });
    }

    /// <summary>--json: the result is one JSON object on stdout.</summary>
    public bool Json { get; }

    /// <summary>--quiet: no progress and no log lines (errors and the result only).</summary>
    public bool Quiet { get; }

    /// <summary>--verbose: stack traces of errors.</summary>
    public bool Verbose { get; }

    /// <summary>A live progress display is shown (stderr is a terminal).</summary>
    public bool Live => _live is not null;

    // A terminal that can redraw: not redirected, not TERM=dumb, and not asked to be plain (QLORA_PROGRESS=plain).
    private static bool StderrIsInteractive() =>
        !Console.IsErrorRedirected &&
        Environment.GetEnvironmentVariable("TERM") is not "dumb" &&
        !string.Equals(Environment.GetEnvironmentVariable("QLORA_PROGRESS"), "plain", StringComparison.OrdinalIgnoreCase);

    /// <summary>A log line on stderr (above the live display, if one runs); nothing with --quiet.</summary>
    public void Log(string line)
    {
        if (Quiet) return;
        if (_live is null)
        {
            Console.Error.WriteLine(line);
            return;
        }
        _live.WriteLine(line);
        _work?.Status(line);
    }

    /// <summary>Text the user must see even with --quiet (stderr).</summary>
    public void Notice(string line)
    {
        if (_live is not null) _live.WriteLine(line);
        else Console.Error.WriteLine(line);
    }

    private static readonly JsonSerializerOptions JsonOptions =
        new() { WriteIndented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>One JSON object as one line (readable: "nf4+dq", not "nf4\u002Bdq"; stdout is never embedded in HTML).</summary>
    public static string JsonLine(JsonNode o) => o.ToJsonString(JsonOptions);

    /// <summary>The command's result: <paramref name="json"/> with --json, else <paramref name="text"/> (when not null), on stdout.</summary>
    public void Result(JsonObject json, string? text)
    {
        if (Json) Console.Out.WriteLine(JsonLine(json));
        else if (text is not null) Console.Out.WriteLine(text);
        Console.Out.Flush();
    }

    /// <summary>
    /// Runs <paramref name="body"/> under a progress display (live mode) whose status line follows the log; bars are
    /// added through the <see cref="Work"/> handle. Without a terminal the handle only feeds the log.
    /// </summary>
    public T Progress<T>(Func<Work, T> body)
    {
        if (_live is null || _work is not null) return body(_work ?? Work.Plain);
        T result = default!;
        _live.Progress()
            .AutoClear(true)
            .HideCompleted(true)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                     new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                _work = new Work(ctx);
                try
                {
                    result = body(_work);
                }
                finally
                {
                    _work.Finish();
                    _work = null;
                }
            });
        return result;
    }

    /// <summary><see cref="Progress{T}"/> without a result.</summary>
    public void Progress(Action<Work> body) => Progress<int>(w =>
    {
        body(w);
        return 0;
    });
}

/// <summary>The progress display of one piece of work: a status line and named bars (no-ops without a terminal).</summary>
internal sealed class Work
{
    public static readonly Work Plain = new(null);

    private readonly ProgressContext? _ctx;
    private readonly ProgressTask? _status;
    private readonly Dictionary<string, ProgressTask> _bars = [];

    public Work(ProgressContext? ctx)
    {
        _ctx = ctx;
        if (ctx is null) return;
        _status = ctx.AddTask("starting", new ProgressTaskSettings { AutoStart = true, MaxValue = 1 });
        _status.IsIndeterminate = true;
    }

    /// <summary>True when there is a live display (a terminal).</summary>
    public bool IsLive => _ctx is not null;

    /// <summary>The status line (the latest log line, shortened).</summary>
    public void Status(string text)
    {
        if (_status is null) return;
        string line = text.Trim().ReplaceLineEndings(" ");
        _status.Description = Markup.Escape(line.Length > 60 ? line[..57] + "..." : line);
    }

    /// <summary>Sets bar <paramref name="key"/> to value / max with a description (created on first use).</summary>
    public void Bar(string key, string description, double value, double max)
    {
        if (_ctx is null) return;
        if (!_bars.TryGetValue(key, out var bar))
        {
            bar = _ctx.AddTask(key, new ProgressTaskSettings { AutoStart = true, MaxValue = Math.Max(max, 1) });
            _bars[key] = bar;
            if (_status is not null) _status.IsIndeterminate = false;
            _status?.StopTask();
        }
        bar.MaxValue = Math.Max(max, 1);
        bar.Value = Math.Min(value, bar.MaxValue);
        bar.Description = Markup.Escape(description);
    }

    internal void Finish()
    {
        _status?.StopTask();
        foreach (var b in _bars.Values) b.StopTask();
    }
}
