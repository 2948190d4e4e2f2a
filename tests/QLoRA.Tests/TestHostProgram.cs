namespace QLoRA.Tests;

/// <summary>
/// The entry point of the test assembly run as a program (<c>dotnet exec QLoRA.Tests.dll train-child ...</c>): it
/// hosts the child processes tests start and kill (<see cref="Reliability.CrashSafetyTests"/>). NUnit never calls it.
/// </summary>
public static class TestHostProgram
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "train-child") return Reliability.CrashSafetyTests.ChildMain(args[1..]);
        Console.Error.WriteLine("QLoRA.Tests runs under `dotnet test`; as a program it only hosts test child processes (train-child)");
        return 2;
    }
}
