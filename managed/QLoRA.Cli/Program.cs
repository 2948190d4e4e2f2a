using QLoRA.Cli;

// qlora: the command-line tool (App builds the commands; docs/cli.md is the manual).
StdoutGuard.Install();
return new App().Main(args);

/// <summary>
/// For command groups registered with <see cref="App.AddGroup"/>: runs an action's body and reports an exception as
/// the tool's one-line error (exit codes of <see cref="ExitCode"/>, --json error object, --verbose stack trace).
/// </summary>
internal static class Cli
{
    public static int Run(System.CommandLine.ParseResult r, System.CommandLine.Option<bool> verbose, Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e)
        {
            return App.Failed(e, r.GetValue<bool>("--json"), r.GetValue(verbose), r.CommandResult.Command);
        }
    }
}
