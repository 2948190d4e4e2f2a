using System.Text;
using QLoRA.Native.Interop;

namespace QLoRA.Native.Tests;

/// <summary>The error paths of the qlora_abi_* exports (their answers are checked by Generated/AbiLayoutTests).</summary>
public sealed unsafe class AbiIntrospectionTests
{
    private static byte[] Z(string s) => Encoding.UTF8.GetBytes(s + "\0");

    [Test]
    public void UnknownNames_AreInvalidArgument_WithAMessage()
    {
        nuint size;
        long value;
        QLoraStatus type, field, missingStruct, constant, nullName;
        fixed (byte* nope = Z("qlora_nope"), view = Z("qlora_view"), col = Z("colz"), k = Z("QLORA_NOPE"))
        {
            type = NativeMethods.qlora_abi_struct_size(nope, &size);
            string typeMessage = LastError();
            field = NativeMethods.qlora_abi_field_offset(view, col, &size);
            string fieldMessage = LastError();
            missingStruct = NativeMethods.qlora_abi_field_offset(nope, col, &size);
            string structMessage = LastError();
            constant = NativeMethods.qlora_abi_enum_value(k, &value);
            string constantMessage = LastError();
            nullName = NativeMethods.qlora_abi_struct_size(null, &size);
            string nullMessage = LastError();
            Assert.Multiple(() =>
            {
                Assert.That(new[] { type, field, missingStruct, constant, nullName }, Is.All.EqualTo(QLoraStatus.ErrorInvalidArgument));
                Assert.That(typeMessage, Does.Contain("unknown type 'qlora_nope'"));
                Assert.That(fieldMessage, Does.Contain("struct qlora_view has no field 'colz'"));
                Assert.That(structMessage, Does.Contain("unknown struct 'qlora_nope'"));
                Assert.That(constantMessage, Does.Contain("unknown constant 'QLORA_NOPE'"));
                Assert.That(nullMessage, Does.Contain("type_name must not be NULL"));
            });
        }
    }

    private static string LastError() =>
        System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)NativeMethods.qlora_last_error()) ?? "";
}
