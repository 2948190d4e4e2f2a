namespace QLoRA.Training;

/// <summary>Learning-rate schedule after the warmup.</summary>
public enum LrScheduleKind
{
    /// <summary>Constant (the QLoRA paper's choice).</summary>
    Constant,
    /// <summary>Linear decay to 0 at the last step.</summary>
    Linear,
    /// <summary>Half-cosine decay to 0 at the last step.</summary>
    Cosine,
}

/// <summary>
/// The learning rate of each optimizer step, as Hugging Face's get_{constant,linear,cosine}_schedule_with_warmup:
/// during warmup lr * s / warmup (s = steps already taken), then constant, linear or cosine decay.
/// </summary>
/// <param name="Kind">The shape after warmup.</param>
/// <param name="PeakLr">The learning rate after warmup.</param>
/// <param name="WarmupSteps">Steps of linear warmup from 0.</param>
/// <param name="TotalSteps">Optimizer steps of the run (the decay reaches 0 there).</param>
public sealed record LrSchedule(LrScheduleKind Kind, double PeakLr, int WarmupSteps, int TotalSteps)
{
    /// <summary>The learning rate for the step taken after <paramref name="step"/> completed steps.</summary>
    public double At(long step)
    {
        if (step < WarmupSteps) return PeakLr * step / Math.Max(1, WarmupSteps);
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return Kind switch
        {
            LrScheduleKind.Constant => PeakLr,
            LrScheduleKind.Linear => PeakLr * Math.Max(0.0, 1.0 - progress),
            LrScheduleKind.Cosine => PeakLr * Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * progress))),
            _ => throw new InvalidOperationException($"unknown schedule {Kind}"),
        };
    }

    /// <summary>Parses "constant", "linear" or "cosine".</summary>
    public static LrScheduleKind ParseKind(string s) => s switch
    {
        "constant" => LrScheduleKind.Constant,
        "linear" => LrScheduleKind.Linear,
        "cosine" => LrScheduleKind.Cosine,
        _ => throw new ArgumentException($"unknown learning-rate schedule \"{s}\" (expected constant, linear or cosine)", nameof(s)),
    };
}
