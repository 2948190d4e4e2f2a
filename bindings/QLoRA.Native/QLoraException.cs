using System.Diagnostics;
using System.Runtime.InteropServices;
using QLoRA.Native.Interop;

namespace QLoRA.Native;

/// <summary>
/// A native call failed. Carries the <see cref="QLoraStatus"/> and the message the core left in
/// <c>qlora_last_error()</c> (which names the function, the argument and the offending value).
/// </summary>
/// <remarks>
/// Native statuses become exceptions in exactly one place, <see cref="ThrowIfFailed"/>, which reads
/// the thread-local message immediately after the failing call, on the same thread.
/// </remarks>
public class QLoraException : Exception
{
    /// <summary>Creates an exception for a failed native call.</summary>
    public QLoraException(QLoraStatus status, string nativeMessage)
        : base(Format(status, nativeMessage))
    {
        Status = status;
        NativeMessage = nativeMessage;
    }

    /// <summary>The status the native call returned (never <see cref="QLoraStatus.Ok"/>).</summary>
    public QLoraStatus Status { get; }

    /// <summary>The native core's own message (<c>qlora_last_error()</c>), e.g. "qlora_q4_quantize: src[3, 7] is not finite ...".</summary>
    public string NativeMessage { get; }

    /// <summary>
    /// Throws a <see cref="QLoraException"/> with the native message if <paramref name="status"/> is not
    /// <see cref="QLoraStatus.Ok"/>. Call it directly on the result of a <see cref="NativeMethods"/> call,
    /// before any other native call on this thread.
    /// </summary>
    [StackTraceHidden]
    public static void ThrowIfFailed(QLoraStatus status)
    {
        if (status != QLoraStatus.Ok) Throw(status);
    }

    [StackTraceHidden]
    private static unsafe void Throw(QLoraStatus status)
    {
        string message = Marshal.PtrToStringUTF8((nint)NativeMethods.qlora_last_error()) ?? "";
        throw new QLoraException(status, message.Length > 0 ? message : "(the native library gave no message)");
    }

    private static string Format(QLoraStatus status, string nativeMessage) => $"{nativeMessage} ({status})";
}
